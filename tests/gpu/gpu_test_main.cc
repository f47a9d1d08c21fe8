// main() of moe_gpu_tests: GoogleTest's, plus one summary line a test runner can rely on.
//
// "moe_gpu_tests: SKIPPED: ..." is printed exactly when nothing failed but the run verified less
// than it was asked to: some test skipped (no usable GPU, see gpu_test_util.h) or the filter
// matched no test. CTest's SKIP_REGULAR_EXPRESSION matches it (cmake/MoeGpuTestChunks.cmake), so
// a chunk reports Skipped, never Passed, without a GPU; and since the line never appears next to
// a failure, a skip pattern cannot turn a failed chunk into a skipped one (GoogleTest's own
// "[  SKIPPED ]" lines can: a chunk with one failure and one skip prints both).
#include <gtest/gtest.h>

#include <cstdio>

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const int rc = RUN_ALL_TESTS();
  const ::testing::UnitTest& u = *::testing::UnitTest::GetInstance();
  if (rc == 0 && u.failed_test_count() == 0) {
    if (u.test_to_run_count() == 0) {
      std::printf("moe_gpu_tests: SKIPPED: no test matched the filter\n");
    } else if (u.skipped_test_count() > 0) {
      std::printf("moe_gpu_tests: SKIPPED: %d of %d tests skipped, none failed\n",
                  u.skipped_test_count(), u.test_to_run_count());
    }
  }
  std::fflush(stdout);
  return rc;
}
