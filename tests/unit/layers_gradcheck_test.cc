// Dense ViT layers (models/layers): finite-difference checks of dx and of every parameter grad,
// a check that Backward accumulates parameter grads, and hand-computable forward values.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/kernels/cpu/gelu.h"
#include "models/layers/attention.h"
#include "models/layers/gelu.h"
#include "models/layers/layer_norm.h"
#include "models/layers/linear.h"
#include "models/layers/mean_pool.h"
#include "models/layers/mlp.h"
#include "models/layers/patch_embed.h"
#include "models/layers/softmax_cross_entropy.h"
#include "tests/unit/grad_check.h"

namespace moe {
namespace {

using testing::Dot;
using testing::ExpectGradientsMatch;
using testing::RandomTensor;

// Replaces the init values (ones, zeros) by random ones, so that e.g. a backward that forgot
// gamma or a forward that forgot the bias cannot pass by accident.
void RandomizeParameters(Layer* layer, uint64_t key) {
  for (Parameter* p : layer->Parameters()) {
    p->value.CopyFrom(RandomTensor(p->value.shape(), key++, 0.5f));
  }
}

double MaxAbs(const Tensor& t) {
  double m = 0;
  for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::abs(static_cast<double>(t.at(i))));
  return m;
}

// Objective L = sum(layer(x) * probe): checks dx and every parameter grad against central
// differences, then that a second Backward adds the same grads again (accumulation).
void CheckLayerGradients(const std::string& what, Layer* layer, Tensor x, uint64_t key,
                         const testing::GradCheckOptions& opt = {}) {
  const Tensor probe = RandomTensor(layer->Forward(x).shape(), key);
  std::vector<Parameter*> params = layer->Parameters();
  for (Parameter* p : params) p->grad.Zero();
  const Tensor dx = layer->Backward(probe).Clone();
  std::vector<Tensor> grads;
  for (Parameter* p : params) grads.push_back(p->grad.Clone());

  // Accumulation: the same Backward again doubles every parameter grad.
  layer->Backward(probe);
  for (size_t k = 0; k < params.size(); ++k) {
    for (int64_t i = 0; i < grads[k].numel(); ++i)
      ASSERT_NEAR(params[k]->grad.at(i), 2.f * grads[k].at(i),
                  1e-5f + 1e-5f * std::abs(grads[k].at(i)))
          << what << ": " << params[k]->name << " grad is not accumulated at " << i;
  }

  auto objective = [&] { return Dot(layer->Forward(x), probe); };
  ASSERT_GT(MaxAbs(dx), 0) << what << ": dx is all zero";
  ExpectGradientsMatch(what + " dx", &x, dx, objective, opt);
  for (size_t k = 0; k < params.size(); ++k) {
    ASSERT_GT(MaxAbs(grads[k]), 0) << what << ": " << params[k]->name << " grad is all zero";
    ExpectGradientsMatch(what + " " + params[k]->name, &params[k]->value, grads[k], objective,
                         opt);
  }
}

TEST(LayersGradCheck, Linear) {
  Linear layer("lin", 6, 5, 11);
  RandomizeParameters(&layer, 100);
  CheckLayerGradients("Linear", &layer, RandomTensor({7, 6}, 1), 2);
}

TEST(LayersGradCheck, LinearNoBias) {
  Linear layer("lin", 6, 5, 11, /*bias=*/false);
  ASSERT_EQ(layer.Parameters().size(), 1u);
  RandomizeParameters(&layer, 100);
  CheckLayerGradients("LinearNoBias", &layer, RandomTensor({3, 6}, 3), 4);
}

TEST(LayersGradCheck, LayerNorm) {
  LayerNorm layer("ln", 8, 11);
  RandomizeParameters(&layer, 200);
  CheckLayerGradients("LayerNorm", &layer, RandomTensor({5, 8}, 5, 2.f), 6);
}

TEST(LayersGradCheck, Gelu) {
  Gelu layer;
  CheckLayerGradients("Gelu", &layer, RandomTensor({4, 9}, 7, 2.f), 8);
}

TEST(LayersGradCheck, Attention) {
  MultiHeadSelfAttention layer("attn", /*dim=*/8, /*heads=*/2, /*tokens=*/4, 11);
  RandomizeParameters(&layer, 300);
  // The key bias is exactly gradient-free (it adds q.b_k to a whole softmax row): the layer
  // writes that zero exactly, while its numeric derivative is pure float32 rounding noise
  // (~1e-4): a wider absolute floor for near-zero grads; real backward errors are orders of
  // magnitude larger.
  testing::GradCheckOptions opt;
  opt.abs_floor = 1e-2;
  CheckLayerGradients("Attention", &layer, RandomTensor({2 * 4, 8}, 9), 10, opt);
  const Tensor& dbqkv = layer.qkv()->bias()->grad;
  for (int64_t j = 8; j < 16; ++j) EXPECT_EQ(dbqkv.at(j), 0.f) << "key bias " << j;
}

TEST(LayersGradCheck, PatchEmbed) {
  // 4x4 images, 2 channels, 2x2 patches: T = 4 tokens of C*p*p = 8 values.
  PatchEmbed layer("embed", /*image=*/4, /*channels=*/2, /*patch=*/2, /*dim=*/6, 11);
  ASSERT_EQ(layer.tokens_per_image(), 4);
  RandomizeParameters(&layer, 400);
  CheckLayerGradients("PatchEmbed", &layer, RandomTensor({2, 2 * 4 * 4}, 11), 12);
}

TEST(LayersGradCheck, Mlp) {
  Mlp layer("mlp", 6, 10, 11);
  RandomizeParameters(&layer, 500);
  CheckLayerGradients("Mlp", &layer, RandomTensor({5, 6}, 13), 14);
}

TEST(LayersGradCheck, MeanPoolTokens) {
  MeanPoolTokens layer(3);
  CheckLayerGradients("MeanPool", &layer, RandomTensor({2 * 3, 5}, 15), 16);
}

TEST(LayersGradCheck, SoftmaxCrossEntropy) {
  // Backward is d(loss_scale * sum_rows CE) = d(Forward * B * loss_scale).
  const int64_t B = 3, C = 5;
  const float loss_scale = 0.25f;
  const std::vector<int> labels = {4, 0, 2};
  Tensor logits = RandomTensor({B, C}, 17, 2.f);
  SoftmaxCrossEntropy ce;
  ce.Forward(logits, labels, loss_scale);
  const Tensor dlogits = ce.Backward();
  ExpectGradientsMatch("CE dlogits", &logits, dlogits, [&] {
    return static_cast<double>(ce.Forward(logits, labels, loss_scale)) * B * loss_scale;
  });
}

// ---- forward values ----

TEST(LayersForward, LinearHandValue) {
  Linear layer("lin", 2, 3, 1);
  layer.weight()->value.CopyFrom(Tensor::FromVector({2, 3}, {1, 2, 3, 4, 5, 6}));
  layer.bias()->value.Fill(0.5f);
  const Tensor y = layer.Forward(Tensor::FromVector({1, 2}, {1, 2}));
  EXPECT_EQ(y.ToVector(), (std::vector<float>{9.5f, 12.5f, 15.5f}));
}

TEST(LayersForward, LayerNormRowsHaveZeroMeanUnitVariance) {
  LayerNorm layer("ln", 16, 1);  // gamma = 1, beta = 0 from the init
  Tensor x = RandomTensor({4, 16}, 21, 3.f);
  for (int64_t i = 0; i < x.numel(); ++i) x.at(i) += 5.f;  // a large mean must not matter
  const Tensor y = layer.Forward(x);
  for (int64_t r = 0; r < 4; ++r) {
    double s = 0, ss = 0;
    for (int64_t j = 0; j < 16; ++j) s += y.at(r * 16 + j);
    for (int64_t j = 0; j < 16; ++j) ss += std::pow(y.at(r * 16 + j) - s / 16, 2);
    EXPECT_NEAR(s / 16, 0.0, 1e-5) << "row " << r;
    EXPECT_NEAR(ss / 16, 1.0, 1e-4) << "row " << r;
  }
}

TEST(LayersForward, GeluValues) {
  Gelu layer;
  const Tensor y = layer.Forward(Tensor::FromVector({1, 4}, {1.f, 0.f, -1.f, -3.f}));
  EXPECT_NEAR(y.at(0), 0.8413447f, 1e-6f);
  EXPECT_EQ(y.at(1), 0.f);
  EXPECT_NEAR(y.at(2), -0.1586553f, 1e-6f);
  EXPECT_NEAR(y.at(3), -0.00404969f, 1e-7f);  // the tail form keeps negative x accurate
  float x0 = 0.f, dy = 1.f, dx = 0.f;
  GeluBackward(&x0, &dy, &dx, 1);
  EXPECT_FLOAT_EQ(dx, 0.5f);  // Phi(0) + 0 * phi(0)
}

TEST(LayersForward, CrossEntropyOfEqualLogitsIsLn2) {
  SoftmaxCrossEntropy ce;
  EXPECT_NEAR(ce.Forward(Tensor::FromVector({1, 2}, {0.f, 0.f}), {0}, 1.f), std::log(2.0), 1e-6);
  EXPECT_EQ(ce.NumCorrect(), 1);  // tie: argmax is the lower index
  EXPECT_EQ(ce.Backward().ToVector(), (std::vector<float>{-0.5f, 0.5f}));
}

TEST(LayersForward, CrossEntropyMeanAndAccuracy) {
  SoftmaxCrossEntropy ce;
  const Tensor logits = Tensor::FromVector({2, 3}, {3.f, 1.f, 0.f, 0.f, 0.f, 2.f});
  const float loss = ce.Forward(logits, {0, 1}, 0.5f);
  const double l0 = std::log(std::exp(3.0) + std::exp(1.0) + 1.0) - 3.0;
  const double l1 = std::log(2.0 + std::exp(2.0));
  EXPECT_NEAR(loss, (l0 + l1) / 2, 1e-6);
  EXPECT_EQ(ce.NumCorrect(), 1);
  EXPECT_EQ(ce.predictions(), (std::vector<int>{0, 2}));
}

TEST(LayersForwardDeathTest, CrossEntropyLabelOutOfRange) {
  SoftmaxCrossEntropy ce;
  const Tensor logits = Tensor::Zeros({2, 3});
  EXPECT_DEATH(ce.Forward(logits, {0, 7}, 1.f), "label 7 at row 1 is out of range");
  EXPECT_DEATH(ce.Forward(logits, {-1, 0}, 1.f), "label -1 at row 0");
}

TEST(LayersForward, AttentionWithOneTokenIsProjectedValue) {
  const int64_t D = 6, B = 3;
  MultiHeadSelfAttention layer("attn", D, 3, /*tokens=*/1, 5);
  RandomizeParameters(&layer, 600);
  const Tensor x = RandomTensor({B, D}, 23);
  const Tensor y = layer.Forward(x);
  const Tensor& wqkv = layer.qkv()->weight()->value;  // [D, 3D]; v is columns 2D..3D
  const Tensor& bqkv = layer.qkv()->bias()->value;
  const Tensor& wo = layer.proj()->weight()->value;
  const Tensor& bo = layer.proj()->bias()->value;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<double> v(D);
    for (int64_t j = 0; j < D; ++j) {
      v[j] = bqkv.at(2 * D + j);
      for (int64_t i = 0; i < D; ++i) v[j] += x.at(b * D + i) * wqkv.at(i * 3 * D + 2 * D + j);
    }
    for (int64_t j = 0; j < D; ++j) {
      double out = bo.at(j);
      for (int64_t i = 0; i < D; ++i) out += v[i] * wo.at(i * D + j);
      EXPECT_NEAR(y.at(b * D + j), out, 1e-5) << "image " << b << " feature " << j;
    }
  }
}

TEST(LayersForward, AttentionDoesNotMixImages) {
  MultiHeadSelfAttention layer("attn", 8, 2, /*tokens=*/4, 5);
  RandomizeParameters(&layer, 700);
  Tensor x = RandomTensor({3 * 4, 8}, 25);
  const Tensor y1 = layer.Forward(x).Clone();
  for (int64_t i = 4 * 8; i < 8 * 8; ++i) x.at(i) += 1.f;  // change image 1 only
  const Tensor y2 = layer.Forward(x);
  for (int64_t i = 0; i < y1.numel(); ++i) {
    const bool image1 = i >= 4 * 8 && i < 8 * 8;
    if (!image1) EXPECT_EQ(y1.at(i), y2.at(i)) << "element " << i;
  }
}

TEST(LayersForwardDeathTest, AttentionRowsNotWholeImages) {
  MultiHeadSelfAttention layer("attn", 8, 2, /*tokens=*/4, 5);
  EXPECT_DEATH(layer.Forward(Tensor::Zeros({6, 8})), "not a whole number of images of 4 tokens");
}

TEST(LayersForward, PatchEmbedPatchLayout) {
  // One 1-channel 4x4 image with pixel value = index; identity projection and zero position
  // embedding, so token t is patch t's pixels in (i, j) order.
  PatchEmbed layer("embed", 4, 1, 2, /*dim=*/4, 1);
  Tensor& w = layer.proj()->weight()->value;
  w.Zero();
  for (int64_t i = 0; i < 4; ++i) w.at(i * 4 + i) = 1.f;
  layer.pos_embed()->value.Zero();
  std::vector<float> img(16);
  for (int i = 0; i < 16; ++i) img[i] = static_cast<float>(i);
  const Tensor y = layer.Forward(Tensor::FromVector({1, 16}, img));
  ASSERT_EQ(y.shape(), (std::vector<int64_t>{4, 4}));
  EXPECT_EQ(y.ToVector(), (std::vector<float>{0, 1, 4, 5, 2, 3, 6, 7,  //
                                              8, 9, 12, 13, 10, 11, 14, 15}));
}

TEST(LayersForwardDeathTest, PatchEmbedSizeNotMultiple) {
  EXPECT_DEATH(PatchEmbed("embed", 5, 1, 2, 4, 1), "image_size 5 must be a positive multiple");
}

TEST(LayersForward, MeanPoolValues) {
  MeanPoolTokens pool(2);
  const Tensor y = pool.Forward(Tensor::FromVector({4, 2}, {1, 2, 3, 4, 5, 6, 7, 9}));
  EXPECT_EQ(y.ToVector(), (std::vector<float>{2, 3, 6, 7.5f}));
}

TEST(LayersInit, NamesAndShapes) {
  MultiHeadSelfAttention attn("b0.attn", 8, 2, 4, 1);
  std::vector<std::string> names;
  for (Parameter* p : attn.Parameters()) names.push_back(p->name);
  EXPECT_EQ(names, (std::vector<std::string>{"b0.attn.qkv.w", "b0.attn.qkv.b", "b0.attn.proj.w",
                                             "b0.attn.proj.b"}));
  PatchEmbed embed("embed", 4, 1, 2, 6, 1);
  EXPECT_EQ(embed.Parameters().back()->name, "embed.pos_embed");
  EXPECT_EQ(embed.pos_embed()->value.shape(), (std::vector<int64_t>{4, 6}));
  // Xavier-uniform bound sqrt(6 / (in + out)), biases zero.
  Linear lin("l", 30, 20, 1);
  const double bound = std::sqrt(6.0 / 50);
  EXPECT_LE(MaxAbs(lin.weight()->value), bound);
  EXPECT_GT(MaxAbs(lin.weight()->value), 0.8 * bound);
  EXPECT_EQ(MaxAbs(lin.bias()->value), 0.0);
}

}  // namespace
}  // namespace moe
