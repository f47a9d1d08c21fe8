// The dense layers on the CUDA backend (core/kernels/cuda/cuda_backend*.cc) against the CPU
// backend: for each layer two instances with the same name and seed (hence the same init),
// randomised parameters and pre-filled random gradients (so Backward must ACCUMULATE, not
// overwrite), one moved to the device with MoveTo(Device::kCUDA); Forward and Backward on the
// same random inputs; outputs, dx and every parameter gradient compared. Every device tensor the
// layers allocate is poisoned with NaN first (SetPoisonNewDeviceTensors), so an element a kernel
// fails to write fails here.
//
// Tolerance: fp32 relative error below 1e-5 of the tensor's max magnitude (kTol), except
// attention at 1e-4 (kAttentionTol): each direction chains six GEMMs and a softmax, cuBLAS
// sums in another order than the host GEMM, and the softmax backward (rows of dS sum to zero)
// cancels, so the rounding differences of the intermediates are amplified relative to the
// result's magnitude. Without a GPU every test reports SKIPPED.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/parameter.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "models/layers/attention.h"
#include "core/backend.h"
#include "models/layers/drop_path.h"
#include "models/layers/gelu.h"
#include "models/layers/layer_norm.h"
#include "models/layers/linear.h"
#include "models/layers/mean_pool.h"
#include "models/layers/mlp.h"
#include "models/layers/patch_embed.h"
#include "models/layers/softmax_cross_entropy.h"
#include "tests/gpu/gpu_test_util.h"

namespace moe {
namespace {

constexpr double kTol = 1e-5;
constexpr double kAttentionTol = 1e-4;

Tensor RandomHost(std::vector<int64_t> shape, uint64_t key, float scale = 1.f) {
  Tensor t(std::move(shape));
  CounterRng rng(key);
  for (int64_t i = 0; i < t.numel(); ++i) t.at(i) = scale * rng.Normal(i);
  return t;
}

Tensor ToDevice(const Tensor& t) {
  Tensor d(t.shape(), Device::kCUDA);
  d.CopyFrom(t);
  return d;
}

// max |got - want| / max |want|; every got element must be finite (poisoned outputs are NaN).
void ExpectClose(const std::string& what, const Tensor& want, const Tensor& got, double tol) {
  ASSERT_EQ(want.device(), Device::kCPU) << what;
  ASSERT_EQ(got.device(), Device::kCUDA) << what << ": the device path returned a host tensor";
  ASSERT_EQ(want.shape(), got.shape()) << what;
  const std::vector<float> w = want.ToVector(), g = got.ToVector();
  double scale = 0, err = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    ASSERT_TRUE(std::isfinite(g[i])) << what << ": element " << i << " is " << g[i]
                                     << " (unwritten or overflowed), host " << w[i];
    scale = std::max(scale, std::abs(static_cast<double>(w[i])));
    err = std::max(err, std::abs(static_cast<double>(g[i]) - w[i]));
  }
  ASSERT_GT(scale, 0) << what << ": the host result is all zero, nothing is checked";
  EXPECT_LT(err / scale, tol) << what << ": max abs error " << err << ", max magnitude " << scale;
}

class LayersGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SKIP_WITHOUT_GPU();
    SetPoisonNewDeviceTensors(true);
  }
  void TearDown() override { SetPoisonNewDeviceTensors(false); }
};

// Same random parameter values and pre-filled grads on both (both still on the host), then the
// second one to the device.
void PrepareTwins(Layer* host, Layer* dev, uint64_t key) {
  std::vector<Parameter*> hp = host->Parameters(), dp = dev->Parameters();
  ASSERT_EQ(hp.size(), dp.size());
  for (size_t k = 0; k < hp.size(); ++k) {
    ASSERT_EQ(hp[k]->name, dp[k]->name);
    const Tensor v = RandomHost(hp[k]->value.shape(), key + 2 * k, 0.5f);
    const Tensor g = RandomHost(hp[k]->grad.shape(), key + 2 * k + 1, 0.1f);
    hp[k]->value.CopyFrom(v);
    dp[k]->value.CopyFrom(v);
    hp[k]->grad.CopyFrom(g);
    dp[k]->grad.CopyFrom(g);
  }
  dev->MoveTo(Device::kCUDA);
  for (Parameter* p : dev->Parameters()) {
    ASSERT_EQ(p->value.device(), Device::kCUDA) << p->name;
    ASSERT_EQ(p->grad.device(), Device::kCUDA) << p->name;
  }
}

// Forward + Backward on both; compares y, dx and every parameter grad.
void CompareTwins(const std::string& what, Layer* host, Layer* dev,
                  const std::vector<int64_t>& in_shape, uint64_t key, double tol = kTol,
                  float in_scale = 1.f) {
  PrepareTwins(host, dev, key + 1000);
  if (::testing::Test::HasFatalFailure()) return;
  const Tensor x = RandomHost(in_shape, key, in_scale);
  const Tensor y = host->Forward(x);
  const Tensor yd = dev->Forward(ToDevice(x));
  ExpectClose(what + " y", y, yd, tol);
  const Tensor dy = RandomHost(y.shape(), key + 1);
  const Tensor dx = host->Backward(dy);
  const Tensor dxd = dev->Backward(ToDevice(dy));
  ExpectClose(what + " dx", dx, dxd, tol);
  std::vector<Parameter*> hp = host->Parameters(), dp = dev->Parameters();
  for (size_t k = 0; k < hp.size(); ++k)
    ExpectClose(what + " " + hp[k]->name + " grad", hp[k]->grad, dp[k]->grad, tol);
}

TEST_F(LayersGpuTest, Linear) {
  Linear host("lin", 24, 20, 7), dev("lin", 24, 20, 7);
  CompareTwins("Linear", &host, &dev, {37, 24}, 1);
}

TEST_F(LayersGpuTest, LinearNoBiasOddSizes) {
  Linear host("lin", 7, 5, 7, /*bias=*/false), dev("lin", 7, 5, 7, /*bias=*/false);
  CompareTwins("LinearNoBias", &host, &dev, {3, 7}, 2);
}

TEST_F(LayersGpuTest, LayerNorm) {
  LayerNorm host("ln", 40, 7), dev("ln", 40, 7);
  CompareTwins("LayerNorm", &host, &dev, {33, 40}, 3, kTol, 2.f);
}

TEST_F(LayersGpuTest, LayerNormOddDim) {
  LayerNorm host("ln", 7, 7), dev("ln", 7, 7);
  CompareTwins("LayerNormOdd", &host, &dev, {5, 7}, 4, kTol, 2.f);
}

TEST_F(LayersGpuTest, Gelu) {
  Gelu host, dev;
  CompareTwins("Gelu", &host, &dev, {9, 13}, 5, kTol, 2.f);
}

TEST_F(LayersGpuTest, Mlp) {
  Mlp host("mlp", 24, 64, 7), dev("mlp", 24, 64, 7);
  CompareTwins("Mlp", &host, &dev, {21, 24}, 6);
}

TEST_F(LayersGpuTest, MeanPoolTokens) {
  MeanPoolTokens host(5), dev(5);
  CompareTwins("MeanPool", &host, &dev, {4 * 5, 12}, 7);
}

TEST_F(LayersGpuTest, PatchEmbed) {
  PatchEmbed host("embed", /*image=*/8, /*channels=*/3, /*patch=*/4, /*dim=*/16, 7);
  PatchEmbed dev("embed", 8, 3, 4, 16, 7);
  CompareTwins("PatchEmbed", &host, &dev, {3, 3 * 8 * 8}, 8);
}

// Checks the exact-zero key-bias rule on the device: the slice [D, 2D) of qkv.b's grad is
// bit-for-bit what it was before Backward.
void CompareAttention(const std::string& what, int64_t dim, int heads, int64_t tokens,
                      int64_t batch, uint64_t key) {
  MultiHeadSelfAttention host("attn", dim, heads, tokens, 7), dev("attn", dim, heads, tokens, 7);
  CompareTwins(what, &host, &dev, {batch * tokens, dim}, key, kAttentionTol);
  if (::testing::Test::HasFatalFailure()) return;
  // PrepareTwins' pre-filled grad of parameter k (qkv.b is k = 1) came from key + 1000 + 2k + 1.
  ASSERT_EQ(dev.Parameters()[1]->name, "attn.qkv.b");
  const std::vector<float> before = RandomHost({3 * dim}, key + 1000 + 3, 0.1f).ToVector();
  const std::vector<float> after = dev.qkv()->bias()->grad.ToVector();
  for (int64_t j = dim; j < 2 * dim; ++j)
    EXPECT_EQ(after[j], before[j]) << what << ": key-bias grad changed at " << j - dim;
}

// Stochastic depth: the same host-drawn masks scale each image's rows on either device, one
// float multiply per element, so y and dx must be bit-equal (a tolerance of one part in 1e-7 of
// the largest magnitude only absorbs nothing). Rate 0.5 over 6 images must drop some and keep
// some, or the kernel's indexing is not exercised.
TEST_F(LayersGpuTest, DropPathScalesEachImage) {
  DropPathContext ctx;
  ctx.training = true;
  ctx.step_key = DropPathStepKey(/*seed=*/1234, /*step=*/7);
  ctx.first_image = 40;
  ctx.batch_images = 6;
  DropPath host(0.5f, /*residual=*/3, &ctx), dev(0.5f, 3, &ctx);
  CompareTwins("DropPath", &host, &dev, {6 * 5, 12}, 11, 1e-7);
  const std::vector<float>& s = host.image_scales();
  ASSERT_EQ(s.size(), 6u);
  EXPECT_TRUE(std::count(s.begin(), s.end(), 0.f) > 0 && std::count(s.begin(), s.end(), 2.f) > 0)
      << "rate 0.5 over 6 images should drop some and keep some at this key";
}

TEST_F(LayersGpuTest, Attention) { CompareAttention("Attention", 32, 4, 16, 3, 9); }

TEST_F(LayersGpuTest, AttentionOddTokens) { CompareAttention("AttentionOdd", 12, 3, 9, 2, 10); }

// The CUDA loss against the host one, without and with label smoothing.
void CompareCrossEntropy(float label_smoothing) {
  const int64_t B = 13, C = 10;
  const Tensor logits = RandomHost({B, C}, 11, 3.f);
  std::vector<int> labels(B);
  for (int64_t r = 0; r < B; ++r) labels[r] = static_cast<int>((r * 7 + 3) % C);
  SoftmaxCrossEntropy host(label_smoothing), dev(label_smoothing);
  const float loss = host.Forward(logits, labels, 0.25f);
  const float loss_d = dev.Forward(ToDevice(logits), labels, 0.25f);
  EXPECT_NEAR(loss_d, loss, kTol * std::max(1.f, std::abs(loss)));
  EXPECT_EQ(dev.predictions(), host.predictions());
  EXPECT_EQ(dev.NumCorrect(), host.NumCorrect());
  ASSERT_EQ(dev.row_losses().size(), host.row_losses().size());
  for (size_t r = 0; r < host.row_losses().size(); ++r)
    EXPECT_NEAR(dev.row_losses()[r], host.row_losses()[r],
                kTol * std::max(1.0, std::abs(host.row_losses()[r])))
        << "row " << r;
  ExpectClose("SoftmaxCrossEntropy dlogits", host.Backward(), dev.Backward(), kTol);
}

TEST_F(LayersGpuTest, SoftmaxCrossEntropy) { CompareCrossEntropy(0.f); }

TEST_F(LayersGpuTest, SoftmaxCrossEntropyLabelSmoothing) { CompareCrossEntropy(0.1f); }

TEST_F(LayersGpuTest, MoveToRoundTripKeepsValues) {
  Linear layer("lin", 6, 5, 7);
  layer.weight()->grad.CopyFrom(RandomHost({6, 5}, 12));
  const std::vector<float> w = layer.weight()->value.ToVector();
  const std::vector<float> g = layer.weight()->grad.ToVector();
  layer.MoveTo(Device::kCUDA);
  ASSERT_EQ(layer.weight()->value.device(), Device::kCUDA);
  layer.MoveTo(Device::kCPU);
  ASSERT_EQ(layer.weight()->value.device(), Device::kCPU);
  EXPECT_EQ(layer.weight()->value.ToVector(), w);
  EXPECT_EQ(layer.weight()->grad.ToVector(), g);
}

}  // namespace
}  // namespace moe
