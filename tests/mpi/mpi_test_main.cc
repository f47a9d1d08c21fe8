// GoogleTest main for multi-rank tests: every rank runs every test; ranks print (run with --gtest_brief=1
// so only failures and the summary show), and the job's exit code is non-zero if any rank failed (a failure on rank 3 must not pass silently).
#include <gtest/gtest.h>
#include <mpi.h>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  int local_failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  int any_failed = 0;
  MPI_Allreduce(&local_failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0 && any_failed && !local_failed)
    fprintf(stderr, "[mpi] a test failed on another rank (see its output above)\n");
  MPI_Finalize();
  return any_failed;
}
