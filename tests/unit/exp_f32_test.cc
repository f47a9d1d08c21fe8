// exp_f32::Exp (core/kernels/cpu/exp_f32.h), the router softmax's float exp, against double exp.
#include "core/kernels/cpu/exp_f32.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace moe {
namespace {

// One float ulp relative to the value: 2^-23 at the bottom of a binade, so 2 ulps relative is at
// most 2 * 2^-23 = 2.4e-7. The bound comes from the header's analysis: the series' truncation
// (5.3e-9), rounding in the reduction (x - n ln2_hi is exact, the ln2_lo term rounds once: 0.5
// ulp of |r|), the Horner steps (the last two round at ~0.5 ulp each of a result in [0.7, 1.5])
// and the exact scaling by 2^n: about 1.5 ulps in all. (An exhaustive sweep of all 1.1e9 floats
// in [-87.3, 0] measured 1.02e-7, 0.86 of 2^-23, at x = -71.05.)
constexpr double kTwoUlps = 2.0 * 1.1920929e-07;

TEST(ExpF32, WithinTwoUlpsOfDoubleExpOverTheDomain) {
  double worst = 0;
  // Every 97th float in [-87.3, 0] (a stride that is not a power of two, so that it meets every
  // position within the reduction interval).
  for (float x = 0.f; x >= exp_f32::kUnderflow;) {
    const double want = std::exp(static_cast<double>(x));
    const double got = exp_f32::Exp(x);
    worst = std::max(worst, std::abs(got - want) / want);
    uint32_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    bits = x == 0.f ? 0x80000001u : bits + 97u;
    std::memcpy(&x, &bits, sizeof x);
  }
  EXPECT_LT(worst, kTwoUlps);
  EXPECT_GT(worst, 0.0);  // a float result is not exact: the sweep really compares
}

TEST(ExpF32, ExactAtZero) {
  EXPECT_EQ(exp_f32::Exp(0.f), 1.f);
  EXPECT_EQ(exp_f32::Exp(-0.f), 1.f);
}

TEST(ExpF32, UnderflowNegativeInfinityAndNaN) {
  EXPECT_EQ(exp_f32::Exp(-87.31f), 0.f);
  EXPECT_EQ(exp_f32::Exp(-1000.f), 0.f);
  EXPECT_EQ(exp_f32::Exp(-std::numeric_limits<float>::infinity()), 0.f);
  EXPECT_TRUE(std::isnan(exp_f32::Exp(std::numeric_limits<float>::quiet_NaN())));
  // Just above the cut: a normal float close to exp(x).
  const float x = -87.29f;
  EXPECT_NEAR(exp_f32::Exp(x) / std::exp(static_cast<double>(x)), 1.0, kTwoUlps);
}

}  // namespace
}  // namespace moe
