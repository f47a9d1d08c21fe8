// SlicedCrossEntropy (the multi-task loss: each row scored on its own logit slice): values
// against hand-computed ones, no gradient outside a row's slice, and a finite-difference check.
#include <gtest/gtest.h>

#include <cmath>

#include "models/layers/sliced_cross_entropy.h"
#include "models/layers/softmax_cross_entropy.h"
#include "tests/unit/grad_check.h"

namespace moe {
namespace {

using testing::ExpectGradientsMatch;
using testing::RandomTensor;

TEST(SlicedCrossEntropy, ScoresOnlyTheSlice) {
  // Row 0 on [0, 3), row 1 on [3, 5); the big logits outside each slice must not matter.
  Tensor logits = Tensor::FromVector({2, 5}, {1.f, 2.f, 3.f, 50.f, -50.f,  //
                                              40.f, 40.f, 40.f, 0.f, 1.f});
  SlicedCrossEntropy ce;
  const float mean = ce.Forward(logits, {2, 3}, {{0, 3}, {3, 5}}, 0.5f);
  const double l0 = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0)) - 3.0;
  const double l1 = std::log(1.0 + std::exp(1.0)) - 0.0;
  EXPECT_NEAR(ce.row_losses()[0], l0, 1e-6);
  EXPECT_NEAR(ce.row_losses()[1], l1, 1e-6);
  EXPECT_NEAR(mean, (l0 + l1) / 2, 1e-6);
  EXPECT_EQ(ce.predictions()[0], 2);
  EXPECT_EQ(ce.predictions()[1], 4);  // argmax within [3, 5), a global column
  EXPECT_EQ(ce.NumCorrect(), 1);
  const Tensor d = ce.Backward();
  for (int j = 3; j < 5; ++j) EXPECT_EQ(d.at(j), 0.f) << "row 0 column " << j;
  for (int j = 0; j < 3; ++j) EXPECT_EQ(d.at(5 + j), 0.f) << "row 1 column " << j;
  double s0 = 0, s1 = 0;  // softmax - onehot sums to 0 over each slice
  for (int j = 0; j < 3; ++j) s0 += d.at(j);
  for (int j = 3; j < 5; ++j) s1 += d.at(5 + j);
  EXPECT_NEAR(s0, 0, 1e-6);
  EXPECT_NEAR(s1, 0, 1e-6);
}

TEST(SlicedCrossEntropy, FullRangeEqualsSoftmaxCrossEntropy) {
  const Tensor logits = RandomTensor({4, 6}, 7);
  const std::vector<int> labels = {0, 5, 2, 3};
  SlicedCrossEntropy sliced;
  SoftmaxCrossEntropy plain;
  EXPECT_NEAR(sliced.Forward(logits, labels, std::vector<std::pair<int, int>>(4, {0, 6}), 0.25f),
              plain.Forward(logits, labels, 0.25f), 1e-6);
  const Tensor a = sliced.Backward(), b = plain.Backward();
  for (int64_t i = 0; i < a.numel(); ++i) EXPECT_NEAR(a.at(i), b.at(i), 1e-7);
}

TEST(SlicedCrossEntropy, MatchesFiniteDifferences) {
  Tensor logits = RandomTensor({5, 14}, 11, 2.f);
  const std::vector<int> labels = {3, 12, 9, 10, 0};
  const std::vector<std::pair<int, int>> ranges = {{0, 10}, {10, 14}, {0, 10}, {10, 14}, {0, 10}};
  const float scale = 1.f / 8;  // a global batch of 8, of which these are 5 rows
  SlicedCrossEntropy ce;
  auto objective = [&]() {
    SlicedCrossEntropy f;
    return static_cast<double>(f.Forward(logits, labels, ranges, scale)) * 5 * scale;
  };
  ce.Forward(logits, labels, ranges, scale);
  ExpectGradientsMatch("sliced_ce.dlogits", &logits, ce.Backward(), objective);
}

}  // namespace
}  // namespace moe
