// The Mixer family's device paths against the host paths: BatchedTransposeCuda (bit-exact: a
// permutation), TransposeTokens and Residual (forward, backward, accumulated grads), and whole
// MlpMixer nets, dense and Sparse-MLP (MoE layers on one rank, SelfCommunicator: any communicator
// serves an EP group of one): logits, every parameter gradient and the MoE metrics after
// MoveTo(kCUDA). Device tensors are NaN-poisoned, so an unwritten element fails. Tolerance
// fp32-relative 1e-4 for the nets (a dozen chained GEMMs summed by cuBLAS in another order; the
// routing itself must agree exactly: same kept assignments counted per expert). Without a GPU
// every test reports SKIPPED.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "comm/self_communicator.h"
#include "core/kernels/cuda/transpose_kernels.h"
#include "core/rng.h"
#include "core/backend.h"
#include "models/layers/gelu.h"
#include "models/layers/linear.h"
#include "models/layers/residual.h"
#include "models/layers/transpose_tokens.h"
#include "models/nets/families.h"
#include "tests/gpu/gpu_test_util.h"

namespace moe {
namespace {

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

// max |got - want| / max |want|, every got element finite.
void ExpectClose(const std::string& what, const Tensor& want, const Tensor& got, double tol) {
  ASSERT_EQ(got.device(), Device::kCUDA) << what << ": the device path returned a host tensor";
  ASSERT_EQ(want.shape(), got.shape()) << what;
  const std::vector<float> w = want.ToVector(), g = got.ToVector();
  double scale = 0, err = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    ASSERT_TRUE(std::isfinite(g[i])) << what << ": element " << i << " is " << g[i];
    scale = std::max(scale, std::abs(static_cast<double>(w[i])));
    err = std::max(err, std::abs(static_cast<double>(g[i]) - w[i]));
  }
  if (scale == 0) {
    EXPECT_EQ(err, 0) << what;
    return;
  }
  EXPECT_LT(err / scale, tol) << what << ": max abs error " << err << ", max magnitude " << scale;
}

class MixerGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SKIP_WITHOUT_GPU();
    SetPoisonNewDeviceTensors(true);
  }
  void TearDown() override { SetPoisonNewDeviceTensors(false); }
};

TEST_F(MixerGpuTest, BatchedTransposeIsExact) {
  // Sizes that are not tile multiples, and one with more than one tile each way.
  for (auto [b, r, c] : {std::tuple<int64_t, int64_t, int64_t>{3, 5, 7}, {2, 70, 33}, {1, 1, 40}}) {
    const Tensor x = RandomHost({b * r, c}, 1);
    Tensor y({b * c, r});
    for (int64_t i = 0; i < b; ++i)
      for (int64_t j = 0; j < r; ++j)
        for (int64_t k = 0; k < c; ++k) y.at((i * c + k) * r + j) = x.at((i * r + j) * c + k);
    const Tensor xd = ToDevice(x);
    Tensor yd = BackendFor(Device::kCUDA).NewTensor({b * c, r});
    BatchedTransposeCuda(xd.data(), b, r, c, yd.data());
    EXPECT_EQ(yd.ToVector(), y.ToVector()) << b << "x" << r << "x" << c;
  }
}

TEST_F(MixerGpuTest, TransposeTokensMatchesHost) {
  TransposeTokens host(6), dev(6);
  const Tensor x = RandomHost({4 * 6, 9}, 2);
  const Tensor y = host.Forward(x);
  const Tensor yd = dev.Forward(ToDevice(x));
  EXPECT_EQ(yd.ToVector(), y.ToVector());
  const Tensor dy = RandomHost(y.shape(), 3);
  EXPECT_EQ(dev.Backward(ToDevice(dy)).ToVector(), host.Backward(dy).ToVector());
}

std::unique_ptr<Residual> SmallResidual() {
  std::vector<std::unique_ptr<Layer>> branch;
  branch.push_back(std::make_unique<Linear>("res.down", 8, 5, 7));
  branch.push_back(std::make_unique<Gelu>());
  branch.push_back(std::make_unique<TransposeTokens>(3));
  branch.push_back(std::make_unique<TransposeTokens>(5));
  branch.push_back(std::make_unique<Linear>("res.up", 5, 8, 7));
  return std::make_unique<Residual>(std::move(branch));
}

TEST_F(MixerGpuTest, ResidualMatchesHost) {
  auto host = SmallResidual(), dev = SmallResidual();
  dev->MoveTo(Device::kCUDA);
  const Tensor x = RandomHost({2 * 3, 8}, 4);
  ExpectClose("Residual y", host->Forward(x), dev->Forward(ToDevice(x)), 1e-5);
  const Tensor dy = RandomHost({6, 8}, 5);
  ExpectClose("Residual dx", host->Backward(dy), dev->Backward(ToDevice(dy)), 1e-5);
  std::vector<Parameter*> hp = host->Parameters(), dp = dev->Parameters();
  ASSERT_EQ(hp.size(), dp.size());
  for (size_t k = 0; k < hp.size(); ++k) ExpectClose(hp[k]->name, hp[k]->grad, dp[k]->grad, 1e-5);
}

proto::TrainConfig NetConfig(bool use_moe, bool both) {
  proto::TrainConfig c;
  c.set_seed(5);
  auto* m = c.mutable_model();
  m->set_family("mixer");
  m->set_hidden_dim(32);
  m->set_num_layers(3);
  m->set_use_moe(use_moe);
  auto* mx = m->mutable_mixer();
  mx->set_token_mlp_dim(24);
  mx->set_channel_mlp_dim(48);
  mx->set_num_sparse_blocks(2);
  mx->set_re_represent_both(both);
  auto* moe = m->mutable_moe();
  moe->set_num_experts(4);
  moe->set_group_size_images(4);
  moe->set_capacity_factor_train(1.0);  // some rows dropped
  moe->set_batch_prioritized_routing(true);
  return c;
}

void CompareNets(bool use_moe, bool both) {
  const proto::TrainConfig c = NetConfig(use_moe, both);
  SelfCommunicator comm;
  std::unique_ptr<Net> host = CreateMixer(c, &comm), dev = CreateMixer(c, &comm);
  MoeStepContext ctx;
  ctx.step = 1;
  ctx.num_global_groups = 2;
  host->SetMoeContext(ctx);
  dev->SetMoeContext(ctx);
  dev->MoveTo(Device::kCUDA);
  const Tensor images = RandomHost({8, 28 * 28}, 6);
  const Tensor logits = host->Forward(images);
  ExpectClose("logits", logits, dev->Forward(ToDevice(images)), 1e-4);
  ASSERT_EQ(host->moe_layers().size(), dev->moe_layers().size());
  for (size_t i = 0; i < host->moe_layers().size(); ++i) {
    const MoeMetrics &h = host->moe_layers()[i]->metrics(), &d = dev->moe_layers()[i]->metrics();
    EXPECT_EQ(d.tokens_per_expert, h.tokens_per_expert) << host->moe_layers()[i]->name();
    EXPECT_EQ(d.dropped, h.dropped) << host->moe_layers()[i]->name();
    EXPECT_NEAR(d.aux_loss, h.aux_loss, 1e-4 * std::abs(h.aux_loss));
  }
  for (Parameter* p : host->Parameters()) p->grad.Zero();
  for (Parameter* p : dev->Parameters()) p->grad.Zero();
  const Tensor dlogits = RandomHost(logits.shape(), 7);
  host->Backward(dlogits);
  dev->Backward(ToDevice(dlogits));
  std::vector<Parameter*> hp = host->Parameters(), dp = dev->Parameters();
  ASSERT_EQ(hp.size(), dp.size());
  for (size_t k = 0; k < hp.size(); ++k) {
    ASSERT_EQ(hp[k]->name, dp[k]->name);
    ExpectClose(hp[k]->name + " grad", hp[k]->grad, dp[k]->grad, 1e-4);
  }
}

TEST_F(MixerGpuTest, DenseMixerMatchesHost) { CompareNets(false, false); }
TEST_F(MixerGpuTest, SparseMlpMatchesHost) { CompareNets(true, false); }
TEST_F(MixerGpuTest, SparseMlpReRepresentBothMatchesHost) { CompareNets(true, true); }

}  // namespace
}  // namespace moe
