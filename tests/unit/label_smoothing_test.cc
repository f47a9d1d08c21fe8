// Label smoothing in the classification losses (SoftmaxCrossEntropy through the backend, and
// SlicedCrossEntropy): the loss against a hand computation, the gradient against central
// differences of the loss, and eps = 0 giving today's loss and gradient bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "models/layers/sliced_cross_entropy.h"
#include "models/layers/softmax_cross_entropy.h"
#include "tests/unit/grad_check.h"

namespace moe {
namespace {

// -sum_j t_j log softmax_j with t = (1 - eps) onehot + eps / K, straight from the definition.
double HandLoss(const std::vector<double>& z, int label, double eps) {
  double mx = z[0];
  for (double v : z) mx = std::max(mx, v);
  double s = 0;
  for (double v : z) s += std::exp(v - mx);
  const double lse = mx + std::log(s);
  double loss = 0;
  for (size_t j = 0; j < z.size(); ++j) {
    const double t = (static_cast<int>(j) == label ? 1 - eps : 0) + eps / z.size();
    loss -= t * (z[j] - lse);
  }
  return loss;
}

TEST(LabelSmoothing, LossMatchesAHandComputation) {
  // Row [1, 2, 3], label 0, eps 0.3: t = [0.8, 0.1, 0.1], log p = z - lse, lse = 3.4076059644.
  const double lse = 3.0 + std::log(1.0 + std::exp(-1.0) + std::exp(-2.0));
  const double by_hand = 0.8 * (lse - 1) + 0.1 * (lse - 2) + 0.1 * (lse - 3);
  EXPECT_NEAR(by_hand, 2.1076059644, 1e-9);
  EXPECT_NEAR(HandLoss({1, 2, 3}, 0, 0.3), by_hand, 1e-12);
  SoftmaxCrossEntropy ce(0.3f);
  ce.Forward(Tensor::FromVector({1, 3}, {1.f, 2.f, 3.f}), {0}, 1.f);
  // The loss runs with eps = float(0.3), which is 1.2e-8 above 0.3; the row loss is computed in
  // double from exact float logits, so only the last bits may differ from the definition.
  const double eps = 0.3f;
  EXPECT_NEAR(ce.row_losses()[0], HandLoss({1, 2, 3}, 0, eps), 1e-12);
  EXPECT_NEAR(ce.row_losses()[0], by_hand, 1e-7);
  // dlogits = p - t.
  const std::vector<float> d = ce.Backward().ToVector();
  const double p[3] = {std::exp(1 - lse), std::exp(2 - lse), std::exp(3 - lse)};
  const double t[3] = {1 - eps + eps / 3, eps / 3, eps / 3};
  for (int j = 0; j < 3; ++j) EXPECT_NEAR(d[j], p[j] - t[j], 4 * 6e-8) << j;
  EXPECT_EQ(ce.NumCorrect(), 0);  // accuracy stays argmax (column 2) against the label
}

// The mean loss's gradient (loss_scale = 1 / B) against central differences of Forward's float
// mean. Tolerance from the float rounding: each Forward is the double mean rounded to float,
// error <= ulp(L) / 2, so the difference quotient carries <= ulp(L) / (2 h); the truncation error
// is h^2 / 6 * max|f'''| with |d^3 lse / dz^3| = |p (1 - p)(1 - 2p)| <= 0.0962, divided by B; the
// analytic gradient itself is a few float operations on values <= 1: <= 4 * 2^-24.
template <typename Loss>
void ExpectGradientMatchesDifferences(Loss* loss, Tensor* logits, const std::function<float()>& f,
                                      int64_t B) {
  const float h = 1.f / 64;  // a power of two: z +- h is exact for the |z| < 4 used here
  const float L = f();
  const Tensor analytic = loss->Backward();
  const double ulp = std::nextafter(std::abs(L), INFINITY) - std::abs(L);
  const double tol = ulp / (2 * h) + h * h / 6 * 0.0962 / B + 4 * std::ldexp(1.0, -24);
  for (int64_t i = 0; i < logits->numel(); ++i) {
    const float saved = logits->at(i);
    logits->at(i) = saved + h;
    const double up = f();
    logits->at(i) = saved - h;
    const double down = f();
    logits->at(i) = saved;
    EXPECT_NEAR(analytic.at(i), (up - down) / (2 * h), tol) << "logit " << i;
  }
}

TEST(LabelSmoothing, GradientMatchesFiniteDifferences) {
  const int64_t B = 4, C = 10;
  Tensor logits = testing::RandomTensor({B, C}, 41, 1.5f);
  const std::vector<int> labels = {3, 0, 9, 3};
  SoftmaxCrossEntropy ce(0.1f);
  ExpectGradientMatchesDifferences(
      &ce, &logits, [&] { return ce.Forward(logits, labels, 1.f / B); }, B);
  // The loss value of every row, against the definition.
  ce.Forward(logits, labels, 1.f / B);
  for (int64_t r = 0; r < B; ++r) {
    std::vector<double> z(logits.data() + r * C, logits.data() + (r + 1) * C);
    EXPECT_NEAR(ce.row_losses()[r], HandLoss(z, labels[r], 0.1f), 1e-12) << r;
  }
}

TEST(LabelSmoothing, ZeroEqualsTheUnsmoothedLossBitForBit) {
  const int64_t B = 5, C = 10;
  const Tensor logits = testing::RandomTensor({B, C}, 42, 2.f);
  const std::vector<int> labels = {1, 4, 4, 0, 9};
  const float scale = 1.f / 96;
  SoftmaxCrossEntropy plain, zero(0.f);
  const float a = plain.Forward(logits, labels, scale), b = zero.Forward(logits, labels, scale);
  EXPECT_EQ(a, b);
  // The gradient's float operations as the loss always computed them: scale * float(p), then
  // scale subtracted at the label.
  const std::vector<float> d = zero.Backward().ToVector();
  for (int64_t r = 0; r < B; ++r) {
    const float* l = logits.data() + r * C;
    double mx = l[0], s = 0;
    for (int64_t j = 1; j < C; ++j) mx = std::max<double>(mx, l[j]);
    for (int64_t j = 0; j < C; ++j) s += std::exp(l[j] - mx);
    const double lse = mx + std::log(s);
    EXPECT_EQ(zero.row_losses()[r], lse - l[labels[r]]) << r;
    for (int64_t j = 0; j < C; ++j) {
      float g = scale * static_cast<float>(std::exp(l[j] - lse));
      if (j == labels[r]) g -= scale;
      EXPECT_EQ(d[r * C + j], g) << r << ", " << j;
    }
  }
}

TEST(LabelSmoothing, SlicedLossSmoothsInsideTheSlice) {
  // Row 0 on columns [0, 10), row 1 on [10, 14): K = 10 and K = 4.
  const int64_t B = 2, C = 14;
  Tensor logits = testing::RandomTensor({B, C}, 43, 1.5f);
  const std::vector<int> labels = {7, 12};
  const std::vector<std::pair<int, int>> ranges = {{0, 10}, {10, 14}};
  SlicedCrossEntropy ce(0.2f);
  ce.Forward(logits, labels, ranges, 1.f / B);
  for (int64_t r = 0; r < B; ++r) {
    const int lo = ranges[r].first, hi = ranges[r].second;
    std::vector<double> z(logits.data() + r * C + lo, logits.data() + r * C + hi);
    EXPECT_NEAR(ce.row_losses()[r], HandLoss(z, labels[r] - lo, 0.2f), 1e-12) << r;
  }
  ExpectGradientMatchesDifferences(
      &ce, &logits, [&] { return ce.Forward(logits, labels, ranges, 1.f / B); }, B);
  // Outside its slice a row gets no gradient.
  ce.Forward(logits, labels, ranges, 1.f / B);
  const std::vector<float> d = ce.Backward().ToVector();
  for (int j = 10; j < 14; ++j) EXPECT_EQ(d[j], 0.f) << j;
  for (int j = 0; j < 10; ++j) EXPECT_EQ(d[C + j], 0.f) << j;
}

TEST(LabelSmoothing, SlicedZeroEqualsUnsmoothedAndFullSliceEqualsSoftmax) {
  const int64_t B = 3, C = 10;
  const Tensor logits = testing::RandomTensor({B, C}, 44, 2.f);
  const std::vector<int> labels = {2, 5, 8};
  const std::vector<std::pair<int, int>> full(B, {0, 10});
  SlicedCrossEntropy sliced_plain, sliced_zero(0.f), sliced_smooth(0.1f);
  EXPECT_EQ(sliced_plain.Forward(logits, labels, full, 0.5f),
            sliced_zero.Forward(logits, labels, full, 0.5f));
  EXPECT_EQ(sliced_plain.Backward().ToVector(), sliced_zero.Backward().ToVector());
  // Over the whole row the two losses define the same smoothing.
  SoftmaxCrossEntropy softmax(0.1f);
  const float a = sliced_smooth.Forward(logits, labels, full, 0.5f);
  const float b = softmax.Forward(logits, labels, 0.5f);
  EXPECT_NEAR(a, b, 1e-6);
  const std::vector<float> da = sliced_smooth.Backward().ToVector(),
                           db = softmax.Backward().ToVector();
  for (size_t i = 0; i < da.size(); ++i) EXPECT_NEAR(da[i], db[i], 1e-7) << i;
}

}  // namespace
}  // namespace moe
