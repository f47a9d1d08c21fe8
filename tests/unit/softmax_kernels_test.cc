// The host row softmax (core/kernels/cpu/softmax.h), which the attention and the router share:
// bit for bit its row-by-row definition whatever the vector width, row length or position in the
// call, and within a derived bound of the double-precision softmax.
#pragma GCC optimize("fp-contract=off")  // the reference below rounds each operation once

#include "core/kernels/cpu/softmax.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/kernels/cpu/exp_f32.h"
#include "core/rng.h"

namespace moe {
namespace {

constexpr double kU = 1.0 / (1 << 24);  // unit roundoff of float

std::vector<float> Uniforms(int64_t n, uint64_t key, float lo, float hi) {
  const CounterRng rng(key);
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = lo + (hi - lo) * rng.Uniform(i);
  return v;
}

// The definition, one row at a time: the max in order, e = Exp(x - max) in float, the sum in
// double in index order, y = float(e * (1 / sum)).
std::vector<float> RowByRow(const std::vector<float>& x, int64_t rows, int64_t cols) {
  std::vector<float> y(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x.data() + r * cols;
    float mx = xr[0];
    for (int64_t j = 1; j < cols; ++j) mx = std::max(mx, xr[j]);
    double sum = 0;
    for (int64_t j = 0; j < cols; ++j) sum += exp_f32::Exp(xr[j] - mx);
    const double inv = 1.0 / sum;
    for (int64_t j = 0; j < cols; ++j)
      y[r * cols + j] = static_cast<float>(exp_f32::Exp(xr[j] - mx) * inv);
  }
  return y;
}

const int64_t kCols[] = {1, 3, 8, 16, 17, 33, 100, 1500};

TEST(SoftmaxKernels, ForwardIsTheRowByRowDefinitionBitForBit) {
  for (int64_t cols : kCols) {
    const int64_t rows = 37;
    const std::vector<float> x = Uniforms(rows * cols, cols, -30.f, 30.f);
    const std::vector<float> want = RowByRow(x, rows, cols);
    std::vector<float> y(x.size());
    SoftmaxForwardRows(x.data(), rows, cols, y.data());
    EXPECT_EQ(y, want) << "cols=" << cols;
    std::vector<float> in_place = x;  // the attention calls it in place
    SoftmaxForwardRows(in_place.data(), rows, cols, in_place.data());
    EXPECT_EQ(in_place, want) << "in place, cols=" << cols;
    for (int64_t r : {int64_t{0}, int64_t{5}, rows - 1}) {  // a row alone gives its bits
      std::vector<float> one(cols);
      SoftmaxForwardRows(x.data() + r * cols, 1, cols, one.data());
      EXPECT_TRUE(std::equal(one.begin(), one.end(), want.begin() + r * cols))
          << "row " << r << " alone, cols=" << cols;
    }
  }
}

// Error budget against the exact softmax, per entry j of a row with d_j = x_j - max (u = 2^-24):
// d_j rounds once (|d_j| u, which moves exp by that relative amount), Exp adds at most 2 ulps
// (4 u relative), so each e_j is within (|d_j| + 4) u; the double sum is then within the worst
// e's error (plus 1e-16-sized roundings), and y's product and final rounding add u. Bound:
// (|d_j| + max_k |d_k| + 9) u relative; 9 = 4 + 4 + 1.
TEST(SoftmaxKernels, ForwardWithinItsDerivedBoundOfTheExactSoftmax) {
  double worst = 0;
  for (int64_t cols : kCols) {
    const int64_t rows = 64;
    const std::vector<float> x = Uniforms(rows * cols, 100 + cols, -40.f, 40.f);
    std::vector<float> y(x.size());
    SoftmaxForwardRows(x.data(), rows, cols, y.data());
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x.data() + r * cols;
      const double mx = *std::max_element(xr, xr + cols);
      double sum = 0, max_d = 0;
      for (int64_t j = 0; j < cols; ++j) {
        sum += std::exp(xr[j] - mx);
        max_d = std::max(max_d, mx - xr[j]);
      }
      for (int64_t j = 0; j < cols; ++j) {
        const double exact = std::exp(xr[j] - mx) / sum;
        if (exact < 1e-30) continue;  // Exp flushes below 2^-126 (exp_f32.h): absolute error
        const double bound = ((mx - xr[j]) + max_d + 9) * kU * exact;
        const double err = std::fabs(y[r * cols + j] - exact);
        worst = std::max(worst, err / bound);
        ASSERT_LE(err, bound) << "cols=" << cols << " row " << r << " col " << j;
      }
    }
  }
  EXPECT_GT(worst, 0.01) << "a bound this loose would hide real errors";
  RecordProperty("worst_error_over_bound", std::to_string(worst));
}

TEST(SoftmaxKernels, NaNMakesItsRowNaNOnly) {
  const int64_t rows = 3, cols = 17;
  std::vector<float> x = Uniforms(rows * cols, 7, -3.f, 3.f);
  x[cols + 5] = std::nanf("");
  std::vector<float> y(x.size());
  SoftmaxForwardRows(x.data(), rows, cols, y.data());
  for (int64_t j = 0; j < cols; ++j) {
    EXPECT_FALSE(std::isnan(y[j]));
    EXPECT_TRUE(std::isnan(y[cols + j]));
    EXPECT_FALSE(std::isnan(y[2 * cols + j]));
  }
}

}  // namespace
}  // namespace moe
