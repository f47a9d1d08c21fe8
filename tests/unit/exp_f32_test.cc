// exp_f32::Exp (core/kernels/cpu/exp_f32.h), the router softmax's float exp, against double exp;
// and the router's SoftmaxRows built on it (models/moe/router_math.h).
#include "core/kernels/cpu/exp_f32.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "core/rng.h"
#include "models/moe/router_math.h"

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

// Logits as the router sees them (a few units wide), plus a row shifted far up (the max
// subtraction), a flat row and a row spanning the underflow cut.
std::vector<float> RouterLogits(int64_t n, int E) {
  const CounterRng rng(7 + E);
  std::vector<float> x(n * E);
  for (int64_t i = 0; i < n * E; ++i) x[i] = 2.f * rng.Normal(i);
  for (int j = 0; j < E; ++j) x[1 * E + j] += 80.f;
  for (int j = 0; j < E; ++j) x[2 * E + j] = 0.5f;
  for (int j = 0; j < E; ++j) x[3 * E + j] = -100.f * j / E;
  return x;
}

// The contract the CUDA kernel mirrors: Exp(x - max) per entry, then the double sum in index
// order and the double normalisation -- bit for bit, whatever vector width the host used.
TEST(RouterSoftmax, IsExpF32ThenDoubleNormalisationBitForBit) {
  for (int E : {1, 2, 7, 8, 33, 128}) {
    const int64_t n = 37;
    const std::vector<float> x = RouterLogits(n, E);
    std::vector<float> got(n * E);
    SoftmaxRows(x.data(), n, E, got.data());
    for (int64_t t = 0; t < n; ++t) {
      const float* xr = x.data() + t * E;
      float mx = xr[0];
      for (int j = 1; j < E; ++j) mx = std::max(mx, xr[j]);
      std::vector<float> e(E);
      double sum = 0;
      for (int j = 0; j < E; ++j) sum += e[j] = exp_f32::Exp(xr[j] - mx);
      for (int j = 0; j < E; ++j)
        ASSERT_EQ(got[t * E + j], static_cast<float>(e[j] * (1.0 / sum))) << E << " " << t;
    }
    std::vector<float> in_place = x;  // probs may alias logits
    SoftmaxRows(in_place.data(), n, E, in_place.data());
    EXPECT_EQ(in_place, got);
  }
}

// Against the exact softmax of the float logits (double exp), with u = 2^-24 (an ulp is at most
// 2u of the value): d_j = x_j - max rounds in float (|d_j| u relative error in exp(d_j)), Exp adds
// 2 ulps, the sum of exps is off by at most 2 ulps plus sum_j e_j |d_j| u / sum_j e_j <= u / e
// (|d| e^d <= 1/e, and the sum >= 1), the final rounding half an ulp: (9.4 + |d_j|) u in all.
// Entries below 2^-126 (flushed by Exp) only absolutely.
TEST(RouterSoftmax, WithinItsDerivedBoundOfTheDoubleSoftmax) {
  for (int E : {2, 8, 128}) {
    const int64_t n = 64;
    const std::vector<float> x = RouterLogits(n, E);
    std::vector<float> got(n * E);
    SoftmaxRows(x.data(), n, E, got.data());
    for (int64_t t = 0; t < n; ++t) {
      const float* xr = x.data() + t * E;
      const double mx = *std::max_element(xr, xr + E);
      double sum = 0;
      for (int j = 0; j < E; ++j) sum += std::exp(xr[j] - mx);
      for (int j = 0; j < E; ++j) {
        const double want = std::exp(xr[j] - mx) / sum;
        const double bound = (9.4 + std::abs(xr[j] - mx)) * 5.9604645e-08 * want + 1.2e-38;
        ASSERT_NEAR(got[t * E + j], want, bound) << E << " " << t;
      }
    }
  }
}

}  // namespace
}  // namespace moe
