// The router noise's float normal draw (CounterRng::NormalF32, core/rng_normal.h): equal to
// Box-Muller in double on the same quantised uniforms within its derived rounding bound, the same
// number whether drawn one by one or in bulk from any offset, and N(0, 1) in its moments.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/rng.h"
#include "core/rng_normal.h"

namespace moe {
namespace {

constexpr double kUnitRoundoff = 1.0 / (1 << 24);  // u = 2^-24, float round-to-nearest

// The definition in double: u1 = ((w1 >> 9) + 1/2) / 2^23, theta = 2 pi ((w2 >> 8) + 1/2) / 2^24.
void DoubleBoxMuller(uint32_t w1, uint32_t w2, double* z0, double* z1, double* r) {
  const double u1 = ((w1 >> 9) + 0.5) / 8388608.0;
  const double theta = 2.0 * M_PI * ((w2 >> 8) + 0.5) / 16777216.0;
  *r = std::sqrt(-2.0 * std::log(u1));
  *z0 = *r * std::cos(theta);
  *z1 = *r * std::sin(theta);
}

// Rounding bound of the float evaluation, counted in u per operation chain (rng_normal.h):
// Log <= 8u relative (the division, the polynomial, and the cancellation of e ln2 + ln m when
// e = -1, which at most doubles the error of the terms), so r = sqrt(-2 Log) <= 5u relative;
// cos and sin <= 7u absolute (the angle's 1.5u, the polynomials' 2u each, the pi/4 rotation's
// 2u; the series' truncation is below 0.03u); z = r cs adds u relative. |dz| <= r (5u + 7u + u).
double FloatBound(double r) { return 13.0 * kUnitRoundoff * std::max(r, 1.0); }

TEST(RngNormalF32, MatchesDoubleBoxMullerWithinTheRoundingBound) {
  const uint64_t key = MixKey(42, 7);
  double worst = 0;  // largest error as a fraction of the bound
  for (uint64_t i = 0; i < 4; ++i) {
    for (uint64_t block = 0; block < 1 << 14; ++block) {
      const auto w = Philox4x32({static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32),
                                 static_cast<uint32_t>(block),
                                 static_cast<uint32_t>(block >> 32) | normal_f32::kBlockTag},
                                key);
      for (int pair = 0; pair < 2; ++pair) {
        double z0, z1, r;
        DoubleBoxMuller(w[2 * pair], w[2 * pair + 1], &z0, &z1, &r);
        const CounterRng rng(key);
        const float f0 = rng.NormalF32(i, 4 * block + 2 * pair);
        const float f1 = rng.NormalF32(i, 4 * block + 2 * pair + 1);
        ASSERT_LE(std::abs(f0 - z0), FloatBound(r)) << "i=" << i << " block=" << block;
        ASSERT_LE(std::abs(f1 - z1), FloatBound(r)) << "i=" << i << " block=" << block;
        worst = std::max(worst, std::abs(f0 - z0) / FloatBound(r));
      }
    }
  }
  RecordProperty("worst_error_over_bound", std::to_string(worst));
}

// The extreme cells: u1 at its smallest and largest, every quadrant's first and last angle.
TEST(RngNormalF32, ExtremeCellsStayWithinTheBound) {
  const uint32_t w1s[] = {0u, 511u, 0x80000000u, 0xFFFFFE00u, 0xFFFFFFFFu};
  for (uint32_t w1 : w1s) {
    for (uint32_t q = 0; q < 4; ++q) {
      for (uint32_t low : {0u, 1u, 0x1FFFFFu, 0x200000u, 0x3FFFFFu}) {
        const uint32_t w2 = ((q << 22) | low) << 8;
        double z0, z1, r;
        DoubleBoxMuller(w1, w2, &z0, &z1, &r);
        float f0, f1;
        normal_f32::BoxMullerPair(w1, w2, &f0, &f1);
        EXPECT_LE(std::abs(f0 - z0), FloatBound(r)) << w1 << " " << w2;
        EXPECT_LE(std::abs(f1 - z1), FloatBound(r)) << w1 << " " << w2;
      }
    }
  }
}

TEST(RngNormalF32, BulkFillEqualsSingleDrawsFromAnyOffset) {
  const CounterRng rng(MixKey(3, 9));
  for (uint64_t j0 : {0, 1, 2, 3, 5, 4096}) {
    for (int64_t n : {0, 1, 3, 4, 7, 33}) {
      std::vector<float> bulk(n);
      rng.FillNormalF32(11, j0, n, bulk.data());
      for (int64_t t = 0; t < n; ++t)
        ASSERT_EQ(bulk[t], rng.NormalF32(11, j0 + t)) << "j0=" << j0 << " n=" << n << " t=" << t;
    }
  }
}

// Moments of 2^20 draws against N(0, 1), each within 5 standard errors of the sample statistic
// (a false failure has probability below 1e-6 per check).
TEST(RngNormalF32, MomentsAreStandardNormal) {
  const int64_t n = 1 << 20;
  std::vector<float> z(n);
  CounterRng(MixKey(5, 1)).FillNormalF32(0, 0, n, z.data());
  double sum = 0, sq = 0, pair_product = 0;
  int64_t beyond2 = 0;
  for (int64_t t = 0; t < n; ++t) {
    sum += z[t];
    sq += static_cast<double>(z[t]) * z[t];
    beyond2 += std::abs(z[t]) > 2.f;
    if (t % 2 == 0) pair_product += static_cast<double>(z[t]) * z[t + 1];
  }
  const double mean = sum / n, var = sq / n - mean * mean;
  EXPECT_NEAR(mean, 0.0, 5.0 / std::sqrt(n));               // std error 1 / sqrt(n)
  EXPECT_NEAR(var, 1.0, 5.0 * std::sqrt(2.0 / n));          // std error sqrt(2 / n)
  EXPECT_NEAR(pair_product / (n / 2), 0.0, 5.0 / std::sqrt(n / 2));  // the pair is independent
  const double p2 = std::erfc(2.0 / std::sqrt(2.0));        // P(|z| > 2) = 0.0455
  EXPECT_NEAR(static_cast<double>(beyond2) / n, p2, 5.0 * std::sqrt(p2 * (1 - p2) / n));
}

}  // namespace
}  // namespace moe
