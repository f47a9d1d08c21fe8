// The host GELU kernels (core/kernels/cpu/gelu.h): every output within its derived bound of the
// double-precision functions over a dense sweep of arguments, and the same bits whatever the
// vector width, position in the call or fused form, and the CPU's clone running its own form of the
// multiply-adds (fused with FMA, rounded twice without).
#include "core/kernels/cpu/gelu.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/rng.h"
#include "tests/unit/normal_tail_bounds.h"

namespace moe {
namespace {

namespace ntb = normal_tail_bounds;
using ntb::kU;

std::vector<float> Normals(int64_t n, uint64_t key, float scale) {
  const CounterRng rng(key);
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = scale * rng.Normal(i);
  return v;
}

// Floats from -16 to 16, relative steps of 1e-5 (absolute 1e-7 near 0): the centre, both tails
// and the cut at |z| = 12, about 1.8 million points.
std::vector<float> DenseSweep() {
  std::vector<float> z;
  for (double v = -16.0; v <= 16.0; v += std::max(std::abs(v) * 1e-5, 1e-7))
    z.push_back(static_cast<float>(v));
  return z;
}

// Phi(x) = Q(-x).
double Cdf(double x) { return ntb::UpperTail(-x); }

using TailAndPdfFn = void (*)(const float*, int64_t, float*, float*);

// One of the two tail-and-density forms against its derived bounds over the dense sweep.
void ExpectTailAndPdfWithinBounds(TailAndPdfFn tail_and_pdf) {
  const std::vector<float> z = DenseSweep();
  const int64_t n = static_cast<int64_t>(z.size());
  std::vector<float> tail(n), pdf(n), tail_only(n);
  tail_and_pdf(z.data(), n, tail.data(), pdf.data());
  tail_and_pdf(z.data(), n, tail_only.data(), nullptr);
  double worst = 0;  // largest error over bound for |z| <= 12, printed to show the bound's slack
  for (int64_t i = 0; i < n; ++i) {
    const double v = z[i];
    const double tail_err = std::abs(tail[i] - ntb::UpperTail(v)), tail_bound = ntb::TailAbsolute(v);
    const double pdf_err = std::abs(pdf[i] - ntb::Pdf(v)), pdf_bound = ntb::PdfAbsolute(v);
    ASSERT_LE(tail_err, tail_bound) << "z=" << v;
    ASSERT_LE(pdf_err, pdf_bound) << "z=" << v;
    if (std::abs(v) <= ntb::kTailCut)
      worst = std::max({worst, tail_err / tail_bound, pdf_err / pdf_bound});
  }
  EXPECT_EQ(tail_only, tail);  // the tail alone takes the same operations
  std::printf("worst error / bound for |z| <= 12: %.3f over %lld points\n", worst, static_cast<long long>(n));
}

TEST(GeluKernels, TailAndPdfWithinTheirDerivedBoundsOverADenseSweep) {
  ExpectTailAndPdfWithinBounds(&NormalTailAndPdf);
}

// The baseline clone's form (multiply-adds rounded twice), which this CPU may not pick itself,
// within the same bounds: the budgets in normal_tail_bounds.h count both roundings.
TEST(GeluKernels, SeparateRoundingFormWithinTheSameBounds) {
  ExpectTailAndPdfWithinBounds(&NormalTailAndPdfSeparateRounding);
  const std::vector<float> x = DenseSweep();
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<float> y(n), dydx(n);
  GeluForwardWithDerivativeSeparateRounding(x.data(), y.data(), dydx.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    const double v = x[i], want = v * Cdf(v), phi = ntb::Pdf(v), slope = Cdf(v) + v * phi;
    ASSERT_LE(std::abs(y[i] - want), std::abs(v) * ntb::CdfAbsolute(v) + kU * std::abs(want))
        << "x=" << v;
    ASSERT_LE(std::abs(dydx[i] - slope), ntb::CdfAbsolute(v) +
                                             std::abs(v) * (ntb::PdfAbsolute(v) + kU * phi) +
                                             kU * std::abs(slope))
        << "x=" << v;
  }
}

// The entry points run the fused form exactly when the CPU picks a fused (v3/v4) clone: on such
// a CPU some elements of the sweep differ in their last bits from the separate form, elsewhere
// none does.
TEST(GeluKernels, EntryPointsRunTheFormOfTheCpusClone) {
  const std::vector<float> x = DenseSweep();
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<float> y(n), dydx(n), y_separate(n), dydx_separate(n);
  GeluForwardWithDerivative(x.data(), y.data(), dydx.data(), n);
  GeluForwardWithDerivativeSeparateRounding(x.data(), y_separate.data(), dydx_separate.data(), n);
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v3")) {
    EXPECT_NE(y, y_separate);
    EXPECT_NE(dydx, dydx_separate);
  } else {
    EXPECT_EQ(y, y_separate);
    EXPECT_EQ(dydx, dydx_separate);
  }
}

// y = x * Phi(x): Phi's error times |x|, and the product's rounding.
TEST(GeluKernels, ForwardWithinItsDerivedBoundOverADenseSweep) {
  const std::vector<float> x = DenseSweep();
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<float> y(n);
  GeluForward(x.data(), y.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    const double v = x[i], want = v * Cdf(v);
    ASSERT_LE(std::abs(y[i] - want), std::abs(v) * ntb::CdfAbsolute(v) + kU * std::abs(want))
        << "x=" << v;
  }
}

// dx = dy * (Phi(x) + x phi(x)): Phi's error, x times phi's error and its product's rounding,
// the sum's rounding, then the product with dy.
TEST(GeluKernels, BackwardWithinItsDerivedBoundOverADenseSweep) {
  const std::vector<float> x = DenseSweep();
  const int64_t n = static_cast<int64_t>(x.size());
  const std::vector<float> dy = Normals(n, 7, 1.f);
  std::vector<float> dx(n);
  GeluBackward(x.data(), dy.data(), dx.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    const double v = x[i], phi = ntb::Pdf(v), slope = Cdf(v) + v * phi;
    const double inner = ntb::CdfAbsolute(v) + std::abs(v) * (ntb::PdfAbsolute(v) + kU * phi) +
                         kU * std::abs(slope);
    ASSERT_LE(std::abs(dx[i] - dy[i] * slope), std::abs(dy[i]) * (inner + kU * std::abs(slope)))
        << "x=" << v;
  }
}

TEST(GeluKernels, NanPropagates) {
  const float nan = std::nanf("");
  float y = 0, tail = 0, pdf = 0;
  GeluForward(&nan, &y, 1);
  NormalTailAndPdf(&nan, 1, &tail, &pdf);
  EXPECT_TRUE(std::isnan(y));
  EXPECT_TRUE(std::isnan(tail));
  EXPECT_TRUE(std::isnan(pdf));
}

// An element's bits do not depend on where it sits in a call: vector lanes, a misaligned start
// and the loop's scalar remainder all round the same operations. (The PIPELINED dispatcher runs
// the experts on chunks of rows and must reproduce FLAT's bits.)
TEST(GeluKernels, BitsDoNotDependOnPositionInTheCall) {
  const int64_t n = 1001;
  const std::vector<float> x = Normals(n, 3, 3.f), dy = Normals(n, 4, 1.f);
  std::vector<float> y(n), dx(n), tail(n), pdf(n), y2(n), dydx(n);
  GeluForward(x.data(), y.data(), n);
  GeluBackward(x.data(), dy.data(), dx.data(), n);
  NormalTailAndPdf(x.data(), n, tail.data(), pdf.data());
  GeluForwardWithDerivative(x.data(), y2.data(), dydx.data(), n);
  for (int64_t start : {0, 1, 3, 17}) {
    for (int64_t i = start; i < n; i += 37) {  // alone: a call of one element
      float yi, dxi, ti, pi, y2i, di;
      GeluForward(&x[i], &yi, 1);
      GeluBackward(&x[i], &dy[i], &dxi, 1);
      NormalTailAndPdf(&x[i], 1, &ti, &pi);
      GeluForwardWithDerivative(&x[i], &y2i, &di, 1);
      ASSERT_EQ(yi, y[i]) << i;
      ASSERT_EQ(dxi, dx[i]) << i;
      ASSERT_EQ(ti, tail[i]) << i;
      ASSERT_EQ(pi, pdf[i]) << i;
      ASSERT_EQ(y2i, y2[i]) << i;
      ASSERT_EQ(di, dydx[i]) << i;
    }
    std::vector<float> shifted(n - start);  // misaligned start, different remainder
    GeluForward(x.data() + start, shifted.data(), n - start);
    ASSERT_TRUE(std::equal(shifted.begin(), shifted.end(), y.begin() + start)) << start;
  }
}

// The split of GELU that the experts and the dense layer use (the forward keeps the derivative,
// the backward multiplies by it, the experts also summing the columns) is GeluForward,
// GeluBackward and a column-sum loop, bit for bit: the elements
// round the same operations, and the sums add the rows in order onto the bias gradient. Also in
// place (dydx over x), as the experts call it.
TEST(GeluKernels, ForwardWithDerivativeThenScaleIsForwardBackwardAndSumsBitForBit) {
  for (int64_t cols : {1, 7, 16, 128, 131}) {
    const int64_t rows = 37, n = rows * cols;
    const std::vector<float> x = Normals(n, 3, 2.f), dy = Normals(n, 4, 1.f);
    const std::vector<float> bias0 = Normals(cols, 5, 1.f);
    std::vector<float> want_y(n), want(n), want_sum = bias0;
    GeluForward(x.data(), want_y.data(), n);
    GeluBackward(x.data(), dy.data(), want.data(), n);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) want_sum[j] += want[i * cols + j];
    std::vector<float> saved = x, got_y(n), got = dy, got_sum = bias0;
    GeluForwardWithDerivative(saved.data(), got_y.data(), saved.data(), n);
    std::vector<float> dense_dx = dy;  // the dense Gelu layer's product, in place over dy
    GeluBackwardFromDerivative(saved.data(), dense_dx.data(), dense_dx.data(), n);
    ScaleWithColumnSums(saved.data(), got.data(), rows, cols, got_sum.data());
    EXPECT_EQ(got_y, want_y) << "cols=" << cols;
    EXPECT_EQ(dense_dx, want) << "cols=" << cols;
    EXPECT_EQ(got, want) << "cols=" << cols;
    EXPECT_EQ(got_sum, want_sum) << "cols=" << cols;
  }
}

}  // namespace
}  // namespace moe
