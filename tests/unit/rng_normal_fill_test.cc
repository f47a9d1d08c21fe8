// FillNormalF32Lanes (core/rng_normal_fill.h) against CounterRng::FillNormalF32: bit for bit, for
// starts on and off a block boundary and lengths around the 64-block chunk.
#include "core/rng_normal_fill.h"

#include <gtest/gtest.h>

#include <vector>

namespace moe {
namespace {

TEST(RngNormalFill, LanesEqualFillNormalF32BitForBit) {
  const CounterRng rng(0x1234abcd5678ef01ull);
  for (uint64_t i : {0ull, 7ull, (1ull << 40) + 3}) {
    for (uint64_t j0 : {0ull, 1ull, 3ull, 4ull, (1ull << 33) + 2}) {
      for (int64_t n : {0, 1, 3, 4, 5, 255, 256, 257, 1024, 1030}) {
        std::vector<float> want(n), got(n, -1.f);
        rng.FillNormalF32(i, j0, n, want.data());
        FillNormalF32Lanes(rng, i, j0, n, got.data());
        for (int64_t t = 0; t < n; ++t)
          ASSERT_EQ(got[t], want[t]) << "i=" << i << " j0=" << j0 << " n=" << n << " t=" << t;
      }
    }
  }
}

}  // namespace
}  // namespace moe
