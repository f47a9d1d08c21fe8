// The MLP-Mixer / Sparse-MLP family: its own layers (TransposeTokens, Residual) against hand
// values and finite differences, the whole net's gradient w.r.t. a sample of every parameter
// (dense Mixer and Sparse-MLP with each re-represent mode, MoE on one rank via SelfCommunicator),
// the FLOP count against a hand count, and the config validator's messages.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "comm/self_communicator.h"
#include "models/layers/gelu.h"
#include "models/layers/linear.h"
#include "models/layers/residual.h"
#include "models/layers/transpose_tokens.h"
#include "models/nets/families.h"
#include "models/nets/mlp_mixer.h"
#include "tests/unit/grad_check.h"

namespace moe {
namespace {

using testing::Dot;
using testing::ExpectGradientsMatch;
using testing::GradCheckOptions;
using testing::RandomTensor;

// L = sum(layer(x) * probe): dx and every parameter grad against central differences.
void ExpectLayerGradients(const std::string& what, Layer* layer, Tensor x, uint64_t key) {
  const Tensor probe = RandomTensor(layer->Forward(x).shape(), key);
  for (Parameter* p : layer->Parameters()) p->grad.Zero();
  const Tensor dx = layer->Backward(probe).Clone();
  auto objective = [&] { return Dot(layer->Forward(x), probe); };
  ExpectGradientsMatch(what + " dx", &x, dx, objective);
  for (Parameter* p : layer->Parameters()) {
    const Tensor g = p->grad.Clone();
    ExpectGradientsMatch(what + " " + p->name, &p->value, g, objective);
  }
}

TEST(TransposeTokens, TransposesEachImage) {
  // 2 images of T = 2 tokens x D = 3: image b's [2, 3] block becomes [3, 2].
  TransposeTokens t(2);
  const Tensor x = Tensor::FromVector({4, 3}, {0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15});
  const Tensor y = t.Forward(x);
  ASSERT_EQ(y.shape(), (std::vector<int64_t>{6, 2}));
  EXPECT_EQ(y.ToVector(), (std::vector<float>{0, 3, 1, 4, 2, 5, 10, 13, 11, 14, 12, 15}));
  // Backward is the inverse permutation; the transpose back (T = D) gives x again.
  EXPECT_EQ(t.Backward(y).ToVector(), x.ToVector());
  TransposeTokens back(3);
  EXPECT_EQ(back.Forward(y).ToVector(), x.ToVector());
}

TEST(TransposeTokens, GradientMatchesFiniteDifferences) {
  TransposeTokens t(5);
  ExpectLayerGradients("TransposeTokens", &t, RandomTensor({3 * 5, 4}, 1), 2);
}

TEST(TransposeTokens, RejectsPartialImages) {
  TransposeTokens t(4);
  EXPECT_DEATH(t.Forward(RandomTensor({6, 3}, 1)), "TransposeTokens: expected");
}

std::unique_ptr<Layer> RandomLinear(const std::string& name, int in, int out, uint64_t key) {
  auto l = std::make_unique<Linear>(name, in, out, 5);
  for (Parameter* p : l->Parameters()) p->value.CopyFrom(RandomTensor(p->value.shape(), key++, 0.5f));
  return l;
}

TEST(Residual, AddsTheSkipPath) {
  std::vector<std::unique_ptr<Layer>> branch;
  branch.push_back(std::make_unique<Gelu>());
  Residual r(std::move(branch));
  const Tensor x = Tensor::FromVector({1, 3}, {-1.f, 0.f, 2.f});
  const Tensor y = r.Forward(x);
  Gelu g;
  const Tensor gx = g.Forward(x);
  for (int i = 0; i < 3; ++i) EXPECT_FLOAT_EQ(y.at(i), x.at(i) + gx.at(i));
  EXPECT_EQ(x.at(0), -1.f) << "the input must not be overwritten";
}

TEST(Residual, GradientMatchesFiniteDifferences) {
  // A branch that changes the width and back, with a nested residual (as re_represent_both uses).
  std::vector<std::unique_ptr<Layer>> inner;
  inner.push_back(RandomLinear("inner", 3, 3, 40));
  std::vector<std::unique_ptr<Layer>> branch;
  branch.push_back(RandomLinear("down", 4, 3, 10));
  branch.push_back(std::make_unique<Gelu>());
  branch.push_back(std::make_unique<Residual>(std::move(inner)));
  branch.push_back(std::make_unique<TransposeTokens>(2));  // [6, 3] -> [9, 2]
  branch.push_back(std::make_unique<TransposeTokens>(3));  // and back to [6, 3]
  branch.push_back(RandomLinear("up", 3, 4, 20));
  Residual r(std::move(branch));
  ASSERT_EQ(r.Parameters().size(), 6u);
  ExpectLayerGradients("Residual", &r, RandomTensor({6, 4}, 3), 4);
}

TEST(Residual, AccumulatesParameterGrads) {
  std::vector<std::unique_ptr<Layer>> branch;
  branch.push_back(RandomLinear("lin", 3, 3, 1));
  Residual r(std::move(branch));
  const Tensor x = RandomTensor({2, 3}, 5), dy = RandomTensor({2, 3}, 6);
  for (Parameter* p : r.Parameters()) p->grad.Zero();
  r.Forward(x);
  r.Backward(dy);
  const Tensor once = r.Parameters()[0]->grad.Clone();
  r.Backward(dy);
  for (int64_t i = 0; i < once.numel(); ++i)
    EXPECT_NEAR(r.Parameters()[0]->grad.at(i), 2 * once.at(i), 1e-5f + 1e-5f * std::abs(once.at(i)));
}

// A small mixer: 28x28 images, patch 7 -> S = 16 patches, C = 8 channels (C1 = 4, S1 = 32).
proto::TrainConfig SmallMixer(bool use_moe) {
  proto::TrainConfig c;
  c.set_seed(17);
  auto* m = c.mutable_model();
  m->set_family("mixer");
  m->set_hidden_dim(8);
  m->set_num_layers(3);
  m->set_use_moe(use_moe);
  auto* mx = m->mutable_mixer();
  mx->set_token_mlp_dim(6);
  mx->set_channel_mlp_dim(12);
  mx->set_num_sparse_blocks(2);
  mx->set_token_moe_top_k(1);
  mx->set_channel_moe_top_k(2);
  auto* moe = m->mutable_moe();
  moe->set_num_experts(4);
  moe->set_group_size_images(2);
  moe->set_capacity_factor_train(4.0);  // room for every row: see the Drops case
  // Large aux weights so a wrong aux gradient cannot hide under the logits term.
  moe->set_importance_loss_weight(0.5f);
  moe->set_load_loss_weight(0.5f);
  return c;
}

struct NetCase {
  const char* name;
  bool use_moe;
  bool re_represent;
  bool both;
  double capacity_factor;
};

using RoutingPrint = std::vector<std::vector<std::pair<int64_t, int>>>;

// Every MoE layer's kept (row, expert) pairs of the last Forward.
RoutingPrint Routing(const Net& net) {
  RoutingPrint r;
  for (const MoeLayer* m : net.moe_layers()) {
    r.emplace_back();
    m->ForEachKeptAssignment([&](int64_t row, int e, float) { r.back().emplace_back(row, e); });
  }
  return r;
}

class MixerNetGradTest : public ::testing::TestWithParam<NetCase> {};

// Objective: sum(logits * probe) + every MoE layer's aux loss (the layers' Backward includes the
// aux gradients). Routing is piecewise constant in the parameters: where a finite-difference
// step flips an expert choice the objective has a kink (top-k switches, the load loss's k-th
// logit changes), so elements whose +-h or +-h/2 evaluations route differently from the
// unperturbed net are skipped and counted, and must stay rare. Away from kinks the objective is
// smooth but steep (sharp gates, the load loss's 1/E-wide normal CDF), so the numeric derivative
// is Richardson-extrapolated, (4 D(h/2) - D(h)) / 3 (error O(h^4)), which lets h be large enough
// that float32 rounding of the objective does not dominate.
TEST_P(MixerNetGradTest, EveryParameterMatchesFiniteDifferences) {
  const NetCase nc = GetParam();
  proto::TrainConfig c = SmallMixer(nc.use_moe);
  c.mutable_model()->mutable_mixer()->set_re_represent(nc.re_represent);
  c.mutable_model()->mutable_mixer()->set_re_represent_both(nc.both);
  c.mutable_model()->mutable_moe()->set_capacity_factor_train(nc.capacity_factor);
  std::vector<std::string> errors;
  ValidateMixerConfig(c, &errors);
  ASSERT_TRUE(errors.empty()) << errors.front();
  SelfCommunicator comm;
  std::unique_ptr<Net> net = CreateMixer(c, &comm);
  ASSERT_EQ(net->moe_layers().size(), nc.use_moe ? 4u : 0u);

  // Random values for every parameter (LayerNorm's ones and zeros would hide a forgotten gamma or
  // beta); routers scaled to O(1) logits so that gates differ and their gradients matter. The
  // frozen position embedding stays zero, as in training.
  uint64_t key = 1000;
  for (Parameter* p : net->Parameters()) {
    if (p->frozen) continue;
    const bool router = p->name.find(".router.") != std::string::npos;
    p->value.CopyFrom(RandomTensor(p->value.shape(), key++, router ? 1.f : 0.3f));
  }
  MoeStepContext ctx;
  ctx.training = true;  // router noise is a fixed function of (step, group, row, expert)
  // The differences need a noise draw with no routing decision within h of a tie for most
  // elements (the check below allows 10% at a kink). Under the float Box-Muller draw (NormalF32)
  // step 2's draw puts one token of `sparse` at such a tie (17% of its checks at a kink); steps
  // 1, 4, 5 and 6 do not (2-7%). Any draw is a fair test of the gradients away from the ties.
  ctx.step = 4;
  ctx.first_global_group = 3;
  ctx.num_global_groups = 2;
  net->SetMoeContext(ctx);

  const int64_t B = 4;  // 2 routing groups of 2 images
  const Tensor images = RandomTensor({B, 28 * 28}, 7);
  const Tensor probe = RandomTensor({B, 10}, 8);
  auto objective = [&]() {
    double v = Dot(net->Forward(images), probe);
    for (MoeLayer* m : net->moe_layers()) v += m->metrics().aux_loss;
    return v;
  };
  objective();
  const RoutingPrint routing = Routing(*net);
  int64_t dropped = 0;
  for (MoeLayer* m : net->moe_layers()) {
    dropped += m->metrics().dropped;
    EXPECT_GT(m->metrics().aux_loss, 0) << m->name();
  }
  if (nc.use_moe) {
    if (nc.capacity_factor < 1) EXPECT_GT(dropped, 0) << "this case must drop rows";
    else EXPECT_EQ(dropped, 0);
  }

  std::vector<Parameter*> params = net->Parameters();
  for (Parameter* p : params) p->grad.Zero();
  net->Forward(images);
  net->Backward(probe);
  const float h = 1e-2f;
  // Float32 rounding makes the numeric derivative rough at the 1e-4 level here; wiring errors
  // (a missing skip path, a wrong transpose) are orders of magnitude larger.
  const double rel_tol = 2e-2, abs_floor = 1e-2;
  constexpr int64_t kChecksPerTensor = 12;
  int checks = 0, skipped = 0, failures = 0, experts = 0;
  for (Parameter* p : params) {
    experts += p->is_expert();
    const int64_t n = p->value.numel();
    for (int64_t i = 0; i < n && failures < 10; i += std::max<int64_t>(1, n / kChecksPerTensor)) {
      const float saved = p->value.at(i);
      bool kink = false;
      auto at = [&](float delta) {
        p->value.at(i) = saved + delta;
        const double v = objective();
        kink = kink || Routing(*net) != routing;
        return v;
      };
      const double d1 = (at(h) - at(-h)) / (2.0 * h);
      const double d2 = (at(h / 2) - at(-h / 2)) / static_cast<double>(h);
      p->value.at(i) = saved;
      ++checks;
      if (kink) {
        ++skipped;
        continue;
      }
      const double numeric = (4 * d2 - d1) / 3, analytic = p->grad.at(i);
      const double denom = std::max({std::abs(analytic), std::abs(numeric), abs_floor});
      if (std::abs(analytic - numeric) / denom > rel_tol) {
        ++failures;
        ADD_FAILURE() << p->name << "#" << p->global_expert_id << "[" << i << "]: analytic "
                      << analytic << " vs numeric " << numeric;
      }
    }
  }
  EXPECT_EQ(experts, nc.use_moe ? 4 * 4 * 4 : 0);  // 4 layers x 4 experts x (w1, b1, w2, b2)
  EXPECT_LE(skipped, checks / 10) << "too many steps cross a routing decision to check much";
  printf("[ %s ] %d elements checked, %d skipped at a routing kink\n", nc.name, checks - skipped,
         skipped);
}

INSTANTIATE_TEST_SUITE_P(
    Mixer, MixerNetGradTest,
    ::testing::Values(NetCase{"dense", false, true, false, 4.0},
                      NetCase{"sparse", true, true, false, 4.0},
                      NetCase{"sparse_drops", true, true, false, 0.6},
                      NetCase{"sparse_both", true, true, true, 4.0},
                      NetCase{"sparse_plain", true, false, false, 4.0}),
    [](const ::testing::TestParamInfo<NetCase>& i) { return std::string(i.param.name); });

TEST(MixerNet, ShapesAndFlopCount) {
  proto::TrainConfig c = SmallMixer(true);
  c.mutable_model()->mutable_moe()->set_num_experts(8);
  SelfCommunicator comm;
  std::unique_ptr<Net> net = CreateMixer(c, &comm);
  const Tensor logits = net->Forward(RandomTensor({4, 28 * 28}, 1));
  EXPECT_EQ(logits.shape(), (std::vector<int64_t>{4, 10}));
  // By hand, S = 16, C = 8, S1 = 32, C1 = 4, E = 8, multiply-adds per image:
  const double embed = 16 * 49 * 8, head = 8 * 10;
  const double dense_block = 8 * 2 * 16 * 6 + 16 * 2 * 8 * 12;        // token + channel MLPs
  const double rerep = 16 * 8 * 4 + 4 * 16 * 32 + 4 * 32 * 16 + 16 * 4 * 8;
  const double moe_s = 4 * (32 * 8 + 1 * 2 * 32 * 6);                 // router + k = 1 expert
  const double moe_c = 16 * (8 * 8 + 2 * 2 * 8 * 12);                 // router + k = 2 experts
  EXPECT_DOUBLE_EQ(net->FlopsPerImage(),
                   2 * (embed + dense_block + 2 * (rerep + moe_s + moe_c) + head));
  // Per-layer expert widths override the dense ones.
  c.mutable_model()->mutable_mixer()->set_channel_expert_hidden_dim(5);
  std::unique_ptr<Net> narrow = CreateMixer(c, &comm);
  EXPECT_DOUBLE_EQ(net->FlopsPerImage() - narrow->FlopsPerImage(),
                   2 * 2 * 16 * 2 * 2 * 8 * (12 - 5));
}

TEST(MixerNet, PositionEmbeddingIsFrozenZero) {
  SelfCommunicator comm;
  std::unique_ptr<Net> net = CreateMixer(SmallMixer(false), &comm);
  int found = 0;
  for (Parameter* p : net->Parameters()) {
    if (p->name.find("pos_embed") == std::string::npos) continue;
    ++found;
    EXPECT_TRUE(p->frozen);
    for (int64_t i = 0; i < p->value.numel(); ++i) ASSERT_EQ(p->value.at(i), 0.f);
  }
  EXPECT_EQ(found, 1);
}

std::vector<std::string> Errors(void (*edit)(proto::TrainConfig*)) {
  proto::TrainConfig c = SmallMixer(true);
  edit(&c);
  std::vector<std::string> e;
  ValidateMixerConfig(c, &e);
  return e;
}

bool Has(const std::vector<std::string>& errors, const std::string& prefix) {
  return std::any_of(errors.begin(), errors.end(),
                     [&](const std::string& e) { return e.rfind(prefix, 0) == 0; });
}

TEST(MixerConfig, ValidatorNamesTheBadField) {
  EXPECT_TRUE(Errors([](proto::TrainConfig*) {}).empty());
  EXPECT_TRUE(Has(Errors([](proto::TrainConfig* c) { c->mutable_model()->set_hidden_dim(7); }),
                  "config error: model.hidden_dim=7: must be even"));
  // Odd widths are fine without sparse blocks (no re-represent layers are built).
  EXPECT_TRUE(Errors([](proto::TrainConfig* c) {
                c->mutable_model()->set_hidden_dim(7);
                c->mutable_model()->set_use_moe(false);
              }).empty());
  EXPECT_TRUE(Has(Errors([](proto::TrainConfig* c) {
                    c->mutable_model()->mutable_mixer()->set_num_sparse_blocks(4);
                  }),
                  "config error: model.mixer.num_sparse_blocks=4: must be in [0, model.num_layers=3]"));
  EXPECT_TRUE(Has(Errors([](proto::TrainConfig* c) {
                    c->mutable_model()->mutable_mixer()->set_num_sparse_blocks(0);
                  }),
                  "config error: model.mixer.num_sparse_blocks=0"));
  EXPECT_TRUE(Has(Errors([](proto::TrainConfig* c) {
                    c->mutable_model()->mutable_mixer()->set_token_moe_top_k(5);
                  }),
                  "config error: model.mixer.token_moe_top_k=5"));
  EXPECT_TRUE(Has(Errors([](proto::TrainConfig* c) {
                    c->mutable_model()->mutable_mixer()->set_channel_moe_top_k(0);
                  }),
                  "config error: model.mixer.channel_moe_top_k=0"));
  EXPECT_TRUE(Has(Errors([](proto::TrainConfig* c) {
                    c->mutable_model()->mutable_mixer()->set_re_represent(false);
                    c->mutable_model()->mutable_mixer()->set_re_represent_both(true);
                  }),
                  "config error: model.mixer.re_represent_both=true"));
  EXPECT_TRUE(Has(Errors([](proto::TrainConfig* c) {
                    c->mutable_model()->mutable_mixer()->set_token_mlp_dim(0);
                  }),
                  "config error: model.mixer.token_mlp_dim=0"));
  EXPECT_TRUE(Has(Errors([](proto::TrainConfig* c) {
                    c->mutable_model()->mutable_moe()->set_routing(proto::MoeConfig::PER_IMAGE);
                  }),
                  "config error: model.moe.routing=PER_IMAGE"));
}

}  // namespace
}  // namespace moe
