// Not a test of the product: a deliberately failing multi-rank test that proves the MPI test
// harness (mpi_test_main.cc) ends the job promptly when one rank fails fatally before a
// collective. tests/e2e/mpi_harness_abort_test.sh runs it and expects a non-zero exit within
// seconds; without the harness's abort the other ranks would wait in the barrier forever.
#include <gtest/gtest.h>
#include <mpi.h>

TEST(FatalFailureProbe, OneRankFailsBeforeABarrier) {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  ASSERT_NE(rank, 2) << "rank 2 fails on purpose";
  MPI_Barrier(MPI_COMM_WORLD);
}
