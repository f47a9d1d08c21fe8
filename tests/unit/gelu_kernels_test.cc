// The host GELU kernels' fused forms (core/kernels/cpu/gelu.h) against their plain definitions:
// GeluBackwardWithColumnSums against GeluBackward plus a column-sum loop, and the
// normal tail and density against double erfc / exp within their derived bounds.
#include "core/kernels/cpu/gelu.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/rng.h"

namespace moe {
namespace {

std::vector<float> Normals(int64_t n, uint64_t key, float scale) {
  const CounterRng rng(key);
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = scale * rng.Normal(i);
  return v;
}

// Not bit for bit: under fast-math an element takes libmvec's vector erfc/exp or, in a loop's
// remainder, libm's scalar ones, and the two loops split their elements differently. Each is
// within kLib = 10u (u = 2^-24, glibc's up to 5 float ulps) of the true functions, so per element
// |d1 - d2| <= 2 |dy| (Phi kLib + |x| phi kLib) plus the product's rounding (2u |d|), and a column
// sum differs by at most the sum of its elements' differences plus its own rounding (rows u per
// partial sum, both loops adding in the same order).
TEST(GeluKernels, BackwardWithColumnSumsMatchesBackwardThenSums) {
  constexpr double kU = 5.9604645e-08, kLib = 10 * kU;
  for (int64_t cols : {1, 7, 16, 128, 131}) {
    const int64_t rows = 37;
    const std::vector<float> x = Normals(rows * cols, 3, 2.f), dy = Normals(rows * cols, 4, 1.f);
    const std::vector<float> bias0 = Normals(cols, 5, 1.f);
    std::vector<float> want(rows * cols), want_sum = bias0;
    GeluBackward(x.data(), dy.data(), want.data(), rows * cols);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) want_sum[j] += want[i * cols + j];
    std::vector<float> got = dy, got_sum = bias0;
    GeluBackwardWithColumnSums(x.data(), got.data(), rows, cols, got_sum.data());
    std::vector<double> col_bound(cols, 0.0), col_abs(cols, 0.0);
    for (int64_t i = 0; i < rows * cols; ++i) {
      const double v = x[i], phi = std::exp(-0.5 * v * v) / std::sqrt(2 * M_PI);
      const double cdf = 0.5 * std::erfc(-v / std::sqrt(2.0));
      const double b = 2 * std::abs(dy[i]) * (cdf + std::abs(v) * phi) * kLib +
                       2 * kU * std::abs(want[i]);
      ASSERT_NEAR(got[i], want[i], b) << "cols=" << cols << " i=" << i;
      col_bound[i % cols] += b;
      col_abs[i % cols] += std::abs(want[i]);
    }
    for (int64_t j = 0; j < cols; ++j)  // accumulated onto bias0, rows in order
      EXPECT_NEAR(got_sum[j], want_sum[j],
                  col_bound[j] + rows * kU * (col_abs[j] + std::abs(bias0[j])))
          << "cols=" << cols << " j=" << j;
  }
}

// u = 2^-24. tail = 0.5 erfc(z / sqrt 2): the argument rounds twice (the constant, the product),
// moving the tail by phi(z) |z| 2u, and erfcf adds 10u relative (glibc lists up to 5 float ulps).
// pdf = exp(-0.5 z z) / sqrt(2 pi): the argument rounds once (0.5 z^2 u relative to exp), expf
// adds 10u, the constant and its product 2u. Beyond |z| = 12 both take their limits: absolute
// errors up to 1 - Phi(12) = 1.8e-33 and phi(12) = 5.4e-32 (the sweep reaches |z| ~ 16).
TEST(GeluKernels, NormalTailAndPdfWithinTheirDerivedBounds) {
  constexpr double kU = 5.9604645e-08, kLib = 10 * kU, kTailTiny = 1.8e-33, kPdfTiny = 5.4e-32;
  const std::vector<float> z = Normals(4096, 6, 4.f);
  std::vector<float> tail(z.size()), pdf(z.size());
  NormalTailAndPdf(z.data(), static_cast<int64_t>(z.size()), tail.data(), pdf.data());
  for (size_t i = 0; i < z.size(); ++i) {
    const double v = z[i], phi = std::exp(-0.5 * v * v) / std::sqrt(2 * M_PI);
    const double q = 0.5 * std::erfc(v / std::sqrt(2.0));
    ASSERT_NEAR(tail[i], q, q * kLib + phi * std::abs(v) * 2 * kU + kTailTiny) << v;
    ASSERT_NEAR(pdf[i], phi, phi * (0.5 * v * v * kU + kLib + 2 * kU) + kPdfTiny) << v;
  }
  std::vector<float> tail_only(z.size());
  NormalTailAndPdf(z.data(), static_cast<int64_t>(z.size()), tail_only.data(), nullptr);
  EXPECT_EQ(tail_only, tail);
}

}  // namespace
}  // namespace moe
