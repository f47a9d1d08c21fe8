// The BLAS thread count the mains take from the environment: OPENBLAS_NUM_THREADS first, then
// OMP_NUM_THREADS, else 1 per rank; a value that is no count is an error naming the variable.
#include <gtest/gtest.h>

#include "core/gemm.h"

namespace moe {
namespace {

TEST(BlasThreads, DefaultIsOnePerRank) {
  for (const char* unset : {static_cast<const char*>(nullptr), ""}) {
    const BlasThreadChoice c = ParseBlasThreads(unset, unset);
    EXPECT_EQ(c.threads, 1);
    EXPECT_EQ(c.source, "default");
    EXPECT_TRUE(c.error.empty());
  }
}

TEST(BlasThreads, OpenBlasVariableWinsOverOpenMp) {
  BlasThreadChoice c = ParseBlasThreads("2", "4");
  EXPECT_EQ(c.threads, 2);
  EXPECT_EQ(c.source, "OPENBLAS_NUM_THREADS=2");
  c = ParseBlasThreads(nullptr, "4");
  EXPECT_EQ(c.threads, 4);
  EXPECT_EQ(c.source, "OMP_NUM_THREADS=4");
  c = ParseBlasThreads("", "3,2");  // OpenMP's nested list: its first level
  EXPECT_EQ(c.threads, 3);
  c = ParseBlasThreads("1024", nullptr);
  EXPECT_EQ(c.threads, 1024);
}

TEST(BlasThreads, BadValuesNameTheVariableAndValue) {
  const std::string why = ": must be an integer in [1, 1024]";
  struct Case {
    const char* openblas;
    const char* omp;
    std::string error;
  };
  const Case cases[] = {{"abc", "2", "OPENBLAS_NUM_THREADS=abc"},
                        {"0", nullptr, "OPENBLAS_NUM_THREADS=0"},
                        {"-2", nullptr, "OPENBLAS_NUM_THREADS=-2"},
                        {"2,2", nullptr, "OPENBLAS_NUM_THREADS=2,2"},
                        {"1025", nullptr, "OPENBLAS_NUM_THREADS=1025"},
                        {"99999999999", nullptr, "OPENBLAS_NUM_THREADS=99999999999"},
                        {nullptr, "x", "OMP_NUM_THREADS=x"},
                        {nullptr, ",4", "OMP_NUM_THREADS=,4"}};
  for (const Case& k : cases) {
    const BlasThreadChoice c = ParseBlasThreads(k.openblas, k.omp);
    EXPECT_EQ(c.threads, 0) << k.error;
    EXPECT_EQ(c.error, k.error + why);
  }
}

}  // namespace
}  // namespace moe
