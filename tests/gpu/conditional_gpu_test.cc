// The conditional family's device path against its host path: MoeLinearPair alone (attribute,
// image-mean and token router inputs, merged and per-expert paths, training noise on, parameter gradients pre-seeded so the beta = 1
// accumulation is checked) and whole ConditionalVit nets with routed attention (ATTRIBUTE and
// TASK levels, MoE FFN on one rank through a SelfCommunicator): a CPU twin and a
// MoveTo(kCUDA) twin built from the same seed, the same images, task and modality ids. Compared:
// outputs, dx, every parameter gradient (max |gpu - cpu| relative to the tensor's max |cpu|:
// 1e-5 for the pair, 1e-4 for the nets, whose GEMMs cuBLAS sums in another order) and the pair's
// routing (experts and gates per row, exactly: the decision is the same host code on the same
// inputs). Device tensors are NaN-poisoned, so an unwritten element fails. Without a GPU every
// test reports SKIPPED.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "comm/self_communicator.h"
#include "core/rng.h"
#include "core/backend.h"
#include "models/moe/moe_linear_pair.h"
#include "models/nets/conditional_vit.h"
#include "models/nets/families.h"
#include "tests/gpu/gpu_test_util.h"

namespace moe {
namespace {

using Level = proto::ConditionalConfig;
using RouterInput = MoeLinearPairOptions::RouterInput;

Tensor Random(std::vector<int64_t> shape, uint64_t key, float scale = 1.f) {
  Tensor t(std::move(shape));
  CounterRng rng(key);
  for (int64_t i = 0; i < t.numel(); ++i) t.at(i) = scale * rng.Normal(i);
  return t;
}

Tensor Up(const Tensor& t) {
  Tensor d(t.shape(), Device::kCUDA);
  d.CopyFrom(t);
  return d;
}

// max |got - want| / max |want| < tol, every element of got finite.
void ExpectNear(const std::string& what, const Tensor& want, const Tensor& got, double tol) {
  ASSERT_EQ(got.device(), Device::kCUDA) << what << ": not a device tensor";
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

class ConditionalGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SKIP_WITHOUT_GPU();
    SetPoisonNewDeviceTensors(true);
  }
  void TearDown() override { SetPoisonNewDeviceTensors(false); }
};

void ComparePair(RouterInput input, bool merge_weights = true) {
  MoeLinearPairOptions o;
  o.in1 = 12;
  o.out1 = 36;
  o.in2 = 12;
  o.out2 = 10;  // not a multiple of 4: the kernels' scalar paths
  o.num_experts = 5;
  o.top_k = 2;
  o.tokens_per_image = 6;
  o.images_per_group = 2;
  o.router_input = input;
  o.attribute_dim = input == RouterInput::kAttributes ? 4 : 0;
  o.merge_weights = merge_weights;
  MoeLinearPair host("pair", o, 11), dev("pair", o, 11);
  for (Parameter* p : dev.Parameters()) MoveParameterTo(p, Device::kCUDA);
  std::vector<Parameter*> hp = host.Parameters(), dp = dev.Parameters();
  ASSERT_EQ(hp.size(), dp.size());
  for (size_t i = 0; i < hp.size(); ++i) {  // same pre-seeded grads: accumulation is checked
    hp[i]->grad.CopyFrom(Random(hp[i]->grad.shape(), 100 + i, 0.1f));
    dp[i]->grad.CopyFrom(hp[i]->grad);
  }
  const int64_t B = 7, T = o.tokens_per_image, rows = B * T;
  // Four attribute patterns over 7 images: groups of 1..2 images, runs broken up.
  Tensor attrs = Tensor::Zeros({rows, 4});
  for (int64_t t = 0; t < rows; ++t) {
    const int64_t pattern = (t / T) * 3 % 4;
    attrs.at(t * 4 + pattern) = 1.f;
    attrs.at(t * 4 + 3) = 1.f;
  }
  MoeStepContext ctx;
  ctx.training = true;  // router noise on
  ctx.step = 4;
  ctx.first_global_group = 1;
  ctx.attributes = &attrs;
  host.SetStepContext(ctx);
  dev.SetStepContext(ctx);

  const Tensor x = Random({rows, o.in1}, 1), h = Random({rows, o.in2}, 2);
  ExpectNear("y1", host.ForwardFirst(x), dev.ForwardFirst(Up(x)), 1e-5);
  EXPECT_EQ(dev.RowExperts(), host.RowExperts());
  EXPECT_EQ(dev.RowGates(), host.RowGates());
  EXPECT_EQ(dev.merged_groups(), host.merged_groups());
  ExpectNear("y2", host.ForwardSecond(h), dev.ForwardSecond(Up(h)), 1e-5);
  const Tensor dy2 = Random({rows, o.out2}, 3), dy1 = Random({rows, o.out1}, 4);
  ExpectNear("dh", host.BackwardSecond(dy2), dev.BackwardSecond(Up(dy2)), 1e-5);
  ExpectNear("dx", host.BackwardFirst(dy1), dev.BackwardFirst(Up(dy1)), 1e-5);
  for (size_t i = 0; i < hp.size(); ++i)
    ExpectNear(hp[i]->name + " grad", hp[i]->grad, dp[i]->grad, 1e-5);
}

TEST_F(ConditionalGpuTest, LinearPairAttributeRoutingMatchesHost) {
  ComparePair(RouterInput::kAttributes);
}
TEST_F(ConditionalGpuTest, LinearPairImageMeanRoutingMatchesHost) {
  ComparePair(RouterInput::kImageMean);
}
// The per-expert path: per-token decisions (routing_level TOKEN), and per-image decisions with
// merge_weights off.
TEST_F(ConditionalGpuTest, LinearPairTokenRoutingMatchesHost) {
  ComparePair(RouterInput::kToken);
}
TEST_F(ConditionalGpuTest, LinearPairUnmergedAttributeRoutingMatchesHost) {
  ComparePair(RouterInput::kAttributes, /*merge_weights=*/false);
}

proto::TrainConfig NetConfig(Level::RoutingLevel level, Level::FfnForm form) {
  proto::TrainConfig c;
  c.set_seed(9);
  c.set_device("cuda");
  auto* m = c.mutable_model();
  m->set_family("conditional");
  m->set_hidden_dim(32);
  m->set_mlp_dim(48);
  m->set_num_heads(4);
  m->set_num_layers(3);  // blocks 0 and 2 MoE
  m->set_use_moe(true);
  m->mutable_conditional()->set_routing_level(level);
  m->mutable_conditional()->set_moe_in_attention(true);
  m->mutable_conditional()->set_ffn_form(form);
  m->mutable_conditional()->set_task_token(false);  // host path only
  auto* moe = m->mutable_moe();
  moe->set_num_experts(4);
  moe->set_top_k(2);
  moe->set_group_size_images(4);
  moe->set_dropless(true);
  return c;
}

void CompareNets(Level::RoutingLevel level, Level::FfnForm form = Level::ROUTED_PAIR) {
  const proto::TrainConfig c = NetConfig(level, form);
  std::vector<std::string> errors;
  ValidateConditionalVitConfig(c, &errors);
  ASSERT_TRUE(errors.empty()) << errors.front();
  SelfCommunicator comm;
  ConditionalVit host(c.model(), &comm, c.seed()), dev(c.model(), &comm, c.seed());
  dev.MoveTo(Device::kCUDA);
  const int64_t B = 8;
  const std::vector<int> task = {0, 1, 1, 0, 1, 0, 0, 1}, modality = {0, 0, 1, 1, 0, 1, 0, 0};
  BatchInfo info;
  info.task = &task;
  info.modality = &modality;
  MoeStepContext ctx;
  ctx.training = true;
  ctx.step = 2;
  ctx.num_global_groups = B / 4;
  for (ConditionalVit* n : {&host, &dev}) {
    n->SetMoeContext(ctx);
    n->SetBatchInfo(info);
  }
  const Tensor images = Random({B, 28 * 28}, 5);
  const Tensor logits = host.Forward(images);
  ExpectNear("logits", logits, dev.Forward(Up(images)), 1e-4);
  ASSERT_EQ(host.attention_moe().size(), dev.attention_moe().size());
  ASSERT_EQ(host.ffn_moe().size(), dev.ffn_moe().size());
  EXPECT_EQ(host.ffn_moe().size(), form == Level::ROUTED_PAIR ? 2u : 0u);
  for (auto pairs : {&ConditionalVit::attention_moe, &ConditionalVit::ffn_moe})
    for (size_t i = 0; i < (host.*pairs)().size(); ++i) {
      EXPECT_EQ((dev.*pairs)()[i]->RowExperts(), (host.*pairs)()[i]->RowExperts());
      EXPECT_EQ((dev.*pairs)()[i]->RowGates(), (host.*pairs)()[i]->RowGates());
    }
  for (Parameter* p : host.Parameters()) p->grad.Zero();
  for (Parameter* p : dev.Parameters()) p->grad.Zero();
  const Tensor dlogits = Random(logits.shape(), 6, 0.1f);
  host.Backward(dlogits);
  dev.Backward(Up(dlogits));
  std::vector<Parameter*> hp = host.Parameters(), dp = dev.Parameters();
  ASSERT_EQ(hp.size(), dp.size());
  for (size_t i = 0; i < hp.size(); ++i) {
    ASSERT_EQ(hp[i]->name, dp[i]->name);
    ExpectNear(hp[i]->name + " grad", hp[i]->grad, dp[i]->grad, 1e-4);
  }
}

TEST_F(ConditionalGpuTest, AttributeLevelNetMatchesHost) { CompareNets(Level::ATTRIBUTE); }
TEST_F(ConditionalGpuTest, TaskLevelNetMatchesHost) { CompareNets(Level::TASK); }
TEST_F(ConditionalGpuTest, AttributeLevelMoeLayerNetMatchesHost) {
  CompareNets(Level::ATTRIBUTE, Level::MOE_LAYER);
}

}  // namespace
}  // namespace moe
