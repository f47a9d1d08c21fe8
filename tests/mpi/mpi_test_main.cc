// GoogleTest main for multi-rank tests: every rank runs every test; ranks print (run with
// --gtest_brief=1 so only failures and the summary show), and the job's exit code is non-zero if
// any rank failed (a failure on rank 3 must not pass silently).
//
// A fatal failure (ASSERT_*, FAIL) returns from the test on that rank only, so its peers would
// wait for it in the next collective until CTest's timeout. The listener below therefore ends
// the whole job at once: gtest's printer has already shown the failure, then MPI_Abort.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>
#include <string>

namespace {

// The test's name is kept from OnTestStart: asking UnitTest::current_test_info() inside
// OnTestPartResult deadlocks (gtest holds its own mutex while reporting a part result).
class AbortJobOnFatalFailure : public ::testing::EmptyTestEventListener {
  void OnTestStart(const ::testing::TestInfo& test) override {
    name_ = std::string(test.test_suite_name()) + "." + test.name();
  }
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.fatally_failed()) return;
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    fprintf(stderr, "[mpi] rank %d: fatal failure in %s at %s:%d; aborting the job so no rank "
                    "waits for this one\n",
            rank, name_.c_str(), result.file_name() ? result.file_name() : "?",
            result.line_number());
    fflush(stdout);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  std::string name_;
};

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  // Appended after gtest's own printer, so the failure is printed before the abort.
  ::testing::UnitTest::GetInstance()->listeners().Append(new AbortJobOnFatalFailure);
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
