// Family "pmoe" (models/nets/patch_cnn.h): the Patchify layer, pMoE's routing through the MoE
// layer the net builds (models/moe/README.md, case 9), the net's own guarantees (an unchosen patch
// contributes nothing to the logits; the two-phase recipe trains the routers alone on their own
// loss, then freezes them and what they see and makes gates 1, so the selected patches stay put),
// finite-difference gradients of the whole net and of the ReLU expert, the FLOPs count and the
// config validator.
// One process (SelfCommunicator); tests/mpi/ep_invariance_pmoe_test.cc covers the ranks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "comm/self_communicator.h"
#include "core/optim/adamw.h"
#include "launcher/config.h"
#include "models/layers/patchify.h"
#include "models/moe/expert_bank.h"
#include "models/nets/families.h"
#include "models/nets/patch_cnn.h"
#include "tests/unit/grad_check.h"

namespace moe {
namespace {

using testing::ExpectGradientsMatch;
using testing::GradCheckOptions;
using testing::RandomTensor;

// ---------------------------------------------------------------------------------------------
// Patchify

TEST(Patchify, LayoutIsAStrideConvsInput) {
  // Two channels of a 4x4 image, pixel value = its CHW index; p = 2 -> 4 patches of 8.
  Patchify layer(4, 2, 2);
  EXPECT_EQ(layer.tokens_per_image(), 4);
  EXPECT_EQ(layer.patch_dim(), 8);
  Tensor x({1, 32});
  for (int i = 0; i < 32; ++i) x.at(i) = static_cast<float>(i);
  const Tensor y = layer.Forward(x);
  ASSERT_EQ(y.dim(0), 4);
  // Patch 1 = (py 0, px 1): rows 0-1, columns 2-3 of each channel, channel-major.
  const std::vector<float> want = {2, 3, 6, 7, 18, 19, 22, 23};
  for (int e = 0; e < 8; ++e) EXPECT_EQ(y.at(1 * 8 + e), want[e]) << e;
  // Patch 2 = (py 1, px 0) starts at row 2, column 0.
  EXPECT_EQ(y.at(2 * 8), 8.f);
}

TEST(Patchify, BackwardIsTheInversePermutation) {
  Patchify layer(6, 1, 3);
  Tensor x = RandomTensor({3, 36}, 11);
  const Tensor probe = RandomTensor({3 * 4, 9}, 12);
  layer.Forward(x);
  const Tensor dx = layer.Backward(probe);
  ExpectGradientsMatch("patchify.dx", &x, dx,
                       [&]() { return testing::Dot(layer.Forward(x), probe); });
  // A permutation: backward of the forward output gives the input back exactly.
  const Tensor round = layer.Backward(layer.Forward(x));
  for (int64_t i = 0; i < x.numel(); ++i) ASSERT_EQ(round.at(i), x.at(i)) << i;
}

// ---------------------------------------------------------------------------------------------
// Configs

proto::ModelConfig SmallModel(int image, int patch, int dim, int experts, int l, int channels,
                              int classes) {
  proto::ModelConfig m;
  m.set_family("pmoe");
  m.set_image_size(image);
  m.set_channels(1);
  m.set_patch_size(patch);
  m.set_hidden_dim(dim);
  m.set_num_classes(classes);
  m.set_use_moe(true);
  auto* moe = m.mutable_moe();
  moe->set_num_experts(experts);
  moe->set_routing(proto::MoeConfig::PATCH_TOP_L);
  moe->set_patch_top_l(l);
  moe->set_router_noise_scale(0);
  moe->set_importance_loss_weight(0);
  moe->set_load_loss_weight(0);
  moe->set_group_size_images(2);
  m.mutable_pmoe()->set_conv_channels(channels);
  return m;
}

std::map<std::pair<int64_t, int>, float> Kept(const MoeLayer& layer) {
  std::map<std::pair<int64_t, int>, float> m;
  layer.ForEachKeptAssignment([&m](int64_t row, int e, float g) { m[{row, e}] = g; });
  return m;
}

std::set<std::pair<int64_t, int>> Pairs(const std::map<std::pair<int64_t, int>, float>& kept) {
  std::set<std::pair<int64_t, int>> s;
  for (const auto& [k, g] : kept) s.insert(k);
  return s;
}

MoeStepContext Context(bool training, int64_t step, int64_t groups) {
  MoeStepContext ctx;
  ctx.training = training;
  ctx.step = step;
  ctx.num_global_groups = groups;
  return ctx;
}

Parameter* Find(const std::vector<Parameter*>& ps, const std::string& name) {
  for (Parameter* p : ps)
    if (p->name == name) return p;
  return nullptr;
}

// ---------------------------------------------------------------------------------------------
// Case 9 (models/moe/README.md) through the MoE layer exactly as the net configures it
// (PmoeMoeOptions).

TEST(PmoeRouting, HandSetRouterPicksEachExpertsTopL) {
  // n = 4 patches (4x4 image, p = 2), D = 3, E = 3 experts, l = 2, two images in one group.
  const proto::ModelConfig model = SmallModel(4, 2, 3, 3, 2, 6, 10);
  const MoeLayerOptions o = PmoeMoeOptions(model);
  EXPECT_EQ(o.rule, RoutingRule::kPatchTopL);
  EXPECT_EQ(o.tokens_per_image, 4);
  EXPECT_EQ(o.group_tokens, 8);
  EXPECT_EQ(o.hidden, 2);  // conv_channels 6 split over 3 experts
  EXPECT_EQ(o.noise_scale, 0.f);
  SelfCommunicator comm;
  MoeLayer layer("moe", o, &comm, 3);
  // Router = identity: expert s's score of a patch is its feature s.
  Parameter* router = Find(layer.Parameters(), "moe.router.w");
  ASSERT_NE(router, nullptr);
  for (int d = 0; d < 3; ++d)
    for (int s = 0; s < 3; ++s) router->value.at(d * 3 + s) = d == s ? 1.f : 0.f;
  const float f[8][3] = {
      // image 0: e0 {p0 3, p2 2}, e1 {p1 2, p3 1}, e2 {p3 2, p0 1}: every patch routed
      {3, 0, 1}, {1, 2, 0}, {2, 0, .5f}, {0, 1, 2},
      // image 1: e0 {p2 5, p1 4}, e1 {p1 3, p2 2}, e2 {p3 3, p2 1}: p0 taken by no expert
      {0, 0, 0}, {4, 3, 0}, {5, 2, 1}, {-1, -1, 3}};
  Tensor x({8, 3});
  for (int t = 0; t < 8; ++t)
    for (int d = 0; d < 3; ++d) x.at(t * 3 + d) = f[t][d];
  layer.SetStepContext(Context(false, 0, 1));
  const Tensor y = layer.Forward(x);
  const auto kept = Kept(layer);
  const std::set<std::pair<int64_t, int>> want = {{0, 0}, {2, 0}, {1, 1}, {3, 1}, {3, 2}, {0, 2},
                                                  {6, 0}, {5, 0}, {5, 1}, {6, 1}, {7, 2}, {6, 2}};
  EXPECT_EQ(Pairs(kept), want);
  // Every expert takes exactly l patches of every image, and its gates there sum to 1.
  for (int img = 0; img < 2; ++img)
    for (int s = 0; s < 3; ++s) {
      int count = 0;
      double sum = 0;
      for (const auto& [k, g] : kept)
        if (k.second == s && k.first / 4 == img) ++count, sum += g;
      EXPECT_EQ(count, 2) << "image " << img << " expert " << s;
      EXPECT_NEAR(sum, 1.0, 1e-6) << "image " << img << " expert " << s;
    }
  // The gate is the softmax over the expert's kept scores: e0 on image 0 keeps scores (3, 2).
  const double e32 = std::exp(3.0) / (std::exp(3.0) + std::exp(2.0));
  EXPECT_NEAR(kept.at({0, 0}), e32, 1e-6);
  EXPECT_NEAR(kept.at({2, 0}), 1 - e32, 1e-6);
  EXPECT_EQ(layer.CurrentCapacity(), 4);  // l x 2 images
  EXPECT_EQ(layer.metrics().tokens_per_expert, (std::vector<int64_t>{4, 4, 4}));
  EXPECT_EQ(layer.metrics().dropped, 0);
  EXPECT_EQ(layer.metrics().unrouted_rows, 1);
  for (int d = 0; d < 3; ++d) EXPECT_EQ(y.at(4 * 3 + d), 0.f) << "unchosen patch, feature " << d;

  // The combine is gate x expert output: with hard gates (1 on the kept patches) a patch one
  // expert alone took comes out 1 / gate times larger.
  layer.set_hard_gates(true);
  const Tensor y_hard = layer.Forward(x);
  const auto kept_hard = Kept(layer);
  EXPECT_EQ(Pairs(kept_hard), want);
  for (const auto& [k, g] : kept_hard) EXPECT_EQ(g, 1.f);
  for (auto [row, expert] : {std::pair<int, int>{2, 0}, {1, 1}})
    for (int d = 0; d < 3; ++d)
      EXPECT_NEAR(y.at(row * 3 + d), kept.at({row, expert}) * y_hard.at(row * 3 + d), 1e-6)
          << "row " << row << " feature " << d;
  for (int d = 0; d < 3; ++d) EXPECT_EQ(y_hard.at(4 * 3 + d), 0.f);
}

// ---------------------------------------------------------------------------------------------
// The net

// Scales the N(0, 0.02) router so that patch scores are O(1) apart (gates differ, and the
// finite-difference steps below do not reorder anyone's top-l).
void SpreadRouter(PatchCnn* net, float scale) {
  Parameter* r = Find(net->Parameters(), "moe.router.w");
  ASSERT_NE(r, nullptr);
  for (int64_t i = 0; i < r->value.numel(); ++i) r->value.at(i) *= scale;
}

Tensor Images(int64_t batch, int64_t pixels, uint64_t key) {
  Tensor x = RandomTensor({batch, pixels}, key);
  for (int64_t i = 0; i < x.numel(); ++i) x.at(i) = 0.5f + 0.25f * x.at(i);
  return x;
}

TEST(PmoeNet, AnUnchosenPatchDoesNotReachTheLogits) {
  // Fashion-MNIST shapes: n = 16 patches of 7x7; E = 4 experts x l = 3 cover at most 12 of them.
  proto::ModelConfig model = SmallModel(28, 7, 8, 4, 3, 16, 10);
  SelfCommunicator comm;
  PatchCnn net(model, &comm, 21);
  SpreadRouter(&net, 40.f);
  net.SetMoeContext(Context(false, 0, 1));
  Tensor x = Images(2, 784, 31);
  const Tensor logits = net.Forward(x).Clone();
  const auto kept = Kept(*net.moe());
  EXPECT_GE(net.moe()->metrics().unrouted_rows, 2 * (16 - 12));
  std::set<int64_t> routed;
  for (const auto& [k, g] : kept) routed.insert(k.first);
  int64_t unchosen = -1, chosen = -1;
  for (int64_t j = 0; j < 16; ++j) (routed.count(j) ? chosen : unchosen) = j;  // image 0
  ASSERT_GE(unchosen, 0);
  ASSERT_GE(chosen, 0);
  // Nudge every pixel of patch j of image 0 (patch j = rows 7*(j/4).., columns 7*(j%4)..).
  auto nudged = [&](int64_t j) {
    Tensor z = x.Clone();
    for (int i = 0; i < 7; ++i)
      for (int c = 0; c < 7; ++c) z.at((7 * (j / 4) + i) * 28 + 7 * (j % 4) + c) += 1e-3f;
    return z;
  };
  const Tensor l_unchosen = net.Forward(nudged(unchosen)).Clone();
  ASSERT_EQ(Pairs(Kept(*net.moe())), Pairs(kept)) << "the nudge changed the routing";
  for (int64_t i = 0; i < logits.numel(); ++i)
    EXPECT_EQ(l_unchosen.at(i), logits.at(i)) << "unchosen patch " << unchosen << " moved logit " << i;
  const Tensor l_chosen = net.Forward(nudged(chosen)).Clone();
  double moved = 0;
  for (int64_t i = 0; i < 10; ++i) moved += std::abs(l_chosen.at(i) - logits.at(i));
  EXPECT_GT(moved, 0) << "a kept patch must reach the logits";
}

struct NetCase {
  const char* name;
  bool use_moe = true;
  bool hard_phase = false;  // ROUTER_THEN_EXPERTS, past the router phase
  bool gate_over_all = false;
  bool router_phase = false;  // ROUTER_THEN_EXPERTS, in the router phase
};

class PmoeNetGradTest : public ::testing::TestWithParam<NetCase> {};

// Objective <logits, probe>; analytic gradients of every trainable parameter (embed, routers,
// experts or the dense Mlp, head, as the recipe's phase leaves them) against central differences,
// on 4 images of 8x8 (n = 4 patches of 4x4); frozen parameters must get no gradient at all. The
// experts use GELU here (smooth everywhere); ReluExpert below checks ReLU away from its kink.
TEST_P(PmoeNetGradTest, MatchesFiniteDifferences) {
  const NetCase c = GetParam();
  proto::ModelConfig model = SmallModel(8, 4, 6, 2, 2, 8, 3);
  model.set_use_moe(c.use_moe);
  model.mutable_moe()->set_patch_gate_over_all(c.gate_over_all);
  model.mutable_pmoe()->set_expert_activation(proto::PmoeConfig::GELU);
  if (c.hard_phase || c.router_phase) {
    model.mutable_pmoe()->set_recipe(proto::PmoeConfig::ROUTER_THEN_EXPERTS);
    model.mutable_pmoe()->set_router_phase_steps(c.router_phase ? 10 : 1);
  }
  SelfCommunicator comm;
  PatchCnn net(model, &comm, 5);
  if (c.use_moe) SpreadRouter(&net, 40.f);
  net.SetMoeContext(Context(true, /*step=*/3, /*groups=*/2));
  ASSERT_EQ(net.experts_phase(), c.hard_phase);
  ASSERT_EQ(net.phase() == PatchCnn::Phase::kRouters, c.router_phase);
  Tensor x = Images(4, 64, 7);
  const Tensor probe = RandomTensor({4, 3}, 8);
  auto objective = [&]() { return testing::Dot(net.Forward(x), probe); };
  const std::vector<Parameter*> params = net.Parameters();
  for (Parameter* p : params) p->grad.Zero();
  net.Forward(x);
  net.Backward(probe);
  std::vector<Tensor> grads;
  for (Parameter* p : params) grads.push_back(p->grad.Clone());
  GradCheckOptions opt;
  opt.step = 2e-3f;
  opt.abs_floor = 5e-3;
  int checked = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const std::string label = std::string(c.name) + "." + params[i]->name + "#" +
                              std::to_string(params[i]->global_expert_id);
    if (params[i]->frozen) {
      for (int64_t j = 0; j < grads[i].numel(); ++j) ASSERT_EQ(grads[i].at(j), 0.f) << label;
      continue;
    }
    ExpectGradientsMatch(label, &params[i]->value, grads[i], objective, opt);
    ++checked;
  }
  // Router phase: the routers alone; experts phase: all but the router and embed's w and b.
  EXPECT_EQ(checked, c.router_phase ? 1 : static_cast<int>(params.size()) - (c.hard_phase ? 3 : 0));
}

INSTANTIATE_TEST_SUITE_P(Pmoe, PmoeNetGradTest,
                         ::testing::Values(NetCase{"pmoe_joint"},
                                           NetCase{"pmoe_gate_over_all", true, false, true},
                                           NetCase{"pmoe_hard_gates", true, true},
                                           NetCase{"pmoe_router_phase", true, false, false, true},
                                           NetCase{"dense_cnn", false}),
                         [](const ::testing::TestParamInfo<NetCase>& info) {
                           return std::string(info.param.name);
                         });

// ROUTER_THEN_EXPERTS, router phase (models/nets/patch_cnn.h): the logits are the fixed
// expert-to-class readout of each router's score averaged over the image's patches. E = 4,
// C = 10: expert s serves the classes c = s (mod 4), one expert per class, so z_c = m_{c mod 4}.
TEST(PmoeTwoPhase, RouterPhaseLogitsAreTheReadoutOfPooledRouterScores) {
  proto::ModelConfig model = SmallModel(28, 7, 8, 4, 3, 16, 10);
  model.mutable_pmoe()->set_recipe(proto::PmoeConfig::ROUTER_THEN_EXPERTS);
  model.mutable_pmoe()->set_router_phase_steps(5);
  SelfCommunicator comm;
  PatchCnn net(model, &comm, 13);
  const std::vector<Parameter*> params = net.Parameters();
  Parameter* w = Find(params, "embed.w");
  Parameter* b = Find(params, "embed.b");
  Parameter* r = Find(params, "moe.router.w");
  ASSERT_TRUE(w != nullptr && b != nullptr && r != nullptr);
  for (int64_t i = 0; i < b->value.numel(); ++i) b->value.at(i) = 0.1f * (i % 3);  // a bias too
  net.SetMoeContext(Context(true, 0, 1));
  ASSERT_EQ(net.phase(), PatchCnn::Phase::kRouters);
  const Tensor x = Images(3, 784, 51);
  const Tensor z = net.Forward(x).Clone();
  ASSERT_EQ(z.dim(0), 3);
  ASSERT_EQ(z.dim(1), 10);
  Patchify patchify(28, 1, 7);
  const Tensor patches = patchify.Forward(x);  // [3 * 16, 49]
  const int P = 49, D = 8, E = 4, n = 16;
  for (int img = 0; img < 3; ++img) {
    std::vector<double> score(E, 0.0);  // m_s = (1/n) sum_j <w_s, embed(x_j)>
    for (int j = 0; j < n; ++j)
      for (int d = 0; d < D; ++d) {
        double h = b->value.at(d);
        for (int p = 0; p < P; ++p) h += patches.at((img * n + j) * P + p) * w->value.at(p * D + d);
        for (int s = 0; s < E; ++s) score[s] += h * r->value.at(d * E + s) / n;
      }
    for (int c = 0; c < 10; ++c)
      EXPECT_NEAR(z.at(img * 10 + c), score[c % E], 1e-5) << "image " << img << " class " << c;
  }
}

std::map<std::string, Tensor> Snapshot(const std::vector<Parameter*>& ps) {
  std::map<std::string, Tensor> m;
  for (Parameter* p : ps) m[p->name + "#" + std::to_string(p->global_expert_id)] = p->value.Clone();
  return m;
}

// Which parameters a step moved, by kind: "router", "embed", "head", "expert".
std::set<std::string> MovedKinds(const std::vector<Parameter*>& ps,
                                 const std::map<std::string, Tensor>& before) {
  std::set<std::string> kinds;
  for (Parameter* p : ps) {
    const Tensor& old = before.at(p->name + "#" + std::to_string(p->global_expert_id));
    bool moved = false;
    for (int64_t i = 0; i < old.numel() && !moved; ++i) moved = old.at(i) != p->value.at(i);
    if (!moved) continue;
    if (p->is_expert()) kinds.insert("expert");
    else kinds.insert(p->name.substr(0, p->name.find('.')) == "moe" ? "router"
                                                                     : p->name.substr(0, p->name.find('.')));
  }
  return kinds;
}

// The paper's separate training: for router_phase_steps steps AdamW moves the routers alone; then
// routers and embed are frozen, gates are 1, experts and head learn, and the patches each expert
// keeps of a fixed input stay the same whatever the experts and head do. An evaluation context
// (step 0) does not undo the switch.
TEST(PmoeTwoPhase, RoutersAloneThenFreshExpertsOnFixedPatches) {
  proto::ModelConfig model = SmallModel(28, 7, 8, 4, 3, 16, 10);
  model.mutable_pmoe()->set_recipe(proto::PmoeConfig::ROUTER_THEN_EXPERTS);
  model.mutable_pmoe()->set_router_phase_steps(3);
  SelfCommunicator comm;
  PatchCnn net(model, &comm, 9);
  const std::vector<Parameter*> params = net.Parameters();
  Parameter* router = Find(params, "moe.router.w");
  ASSERT_NE(router, nullptr);
  AdamWConfig ac;
  ac.lr = 0.05f;  // large, so that a drifting input of the routers would show at once
  AdamW opt(ac);
  const Tensor x = Images(4, 784, 41), fixed = Images(2, 784, 43);
  const std::vector<int> labels = {3, 1, 4, 1};
  std::set<std::pair<int64_t, int>> selected;
  for (int step = 0; step < 9; ++step) {
    const bool phase2 = step >= 3;
    net.SetMoeContext(Context(true, step, 2));
    ASSERT_EQ(net.phase(), phase2 ? PatchCnn::Phase::kExperts : PatchCnn::Phase::kRouters);
    EXPECT_EQ(router->frozen, phase2) << "step " << step;
    EXPECT_TRUE(Find(params, "embed.w")->frozen) << "step " << step;
    EXPECT_EQ(net.moe()->options().hard_gates, phase2) << "step " << step;
    for (Parameter* p : params) p->grad.Zero();
    const Tensor logits = net.Forward(x);
    // d(mean CE) / d(logits), so that every phase sees the trainer's loss.
    Tensor dlogits({4, 10});
    for (int i = 0; i < 4; ++i) {
      double mx = -1e30, sum = 0;
      for (int c = 0; c < 10; ++c) mx = std::max<double>(mx, logits.at(i * 10 + c));
      for (int c = 0; c < 10; ++c) sum += std::exp(logits.at(i * 10 + c) - mx);
      for (int c = 0; c < 10; ++c)
        dlogits.at(i * 10 + c) = static_cast<float>(
            (std::exp(logits.at(i * 10 + c) - mx) / sum - (c == labels[i])) / 4);
    }
    if (phase2)
      for (const auto& [k, g] : Kept(*net.moe())) EXPECT_EQ(g, 1.f) << "step " << step;
    net.Backward(dlogits);
    const auto before = Snapshot(params);
    opt.Step(params, ac.lr);
    const std::set<std::string> want =
        phase2 ? std::set<std::string>{"expert", "head"} : std::set<std::string>{"router"};
    EXPECT_EQ(MovedKinds(params, before), want) << "step " << step;
    if (!phase2) continue;
    net.SetMoeContext(Context(false, 0, 1));  // the trainer's evaluation context
    EXPECT_TRUE(net.experts_phase());
    net.Forward(fixed);
    const auto now = Pairs(Kept(*net.moe()));
    EXPECT_EQ(now.size(), 2u * 4u * 3u);  // 2 images x E = 4 experts x l = 3
    if (step == 3) selected = now;
    EXPECT_EQ(now, selected) << "step " << step << ": the selected patches moved";
  }
}

// pMoE's experts are ReLU by default; every other family keeps GELU.
TEST(PmoeNet, ExpertActivationIsReluByDefaultGeluOnRequest) {
  proto::ModelConfig model = SmallModel(28, 7, 8, 4, 3, 16, 10);
  EXPECT_EQ(PmoeMoeOptions(model).expert_activation, MoeLayerOptions::Activation::kRelu);
  model.mutable_pmoe()->set_expert_activation(proto::PmoeConfig::GELU);
  EXPECT_EQ(PmoeMoeOptions(model).expert_activation, MoeLayerOptions::Activation::kGelu);
  EXPECT_EQ(MoeLayerOptions().expert_activation, MoeLayerOptions::Activation::kGelu);
}

// The ReLU expert against central differences. ReLU has a kink at 0, where a difference quotient
// straddling it is meaningless, so each hidden unit's bias is chosen to keep every pre-activation
// at least kMargin away from 0, far beyond what one step of h moves it.
TEST(ReluExpert, MatchesFiniteDifferencesAwayFromTheKink) {
  const int D = 5, H = 7;
  const std::vector<int64_t> rows = {3, 4};
  ExpertBank bank("relu", D, H, 0, 2, 17, MoeLayerOptions::Activation::kRelu);
  Tensor x = RandomTensor({7, D}, 61);
  const std::vector<Parameter*> ps = bank.Parameters();  // w1, b1, w2, b2 per expert
  constexpr double kMargin = 0.1;
  int64_t row0 = 0;
  for (int l = 0; l < 2; ++l) {
    Parameter* w1 = ps[4 * l];
    Parameter* b1 = ps[4 * l + 1];
    for (int u = 0; u < H; ++u) {
      std::vector<double> pre;
      for (int64_t i = row0; i < row0 + rows[l]; ++i) {
        double v = 0;
        for (int d = 0; d < D; ++d) v += x.at(i * D + d) * w1->value.at(d * H + u);
        pre.push_back(v);
      }
      double best = 0, best_gap = -1;  // the bias in [-1, 1] farthest from every kink
      for (int k = -100; k <= 100; ++k) {
        double gap = 1e9;
        for (double v : pre) gap = std::min(gap, std::abs(v + 0.01 * k));
        if (gap > best_gap) best_gap = gap, best = 0.01 * k;
      }
      ASSERT_GT(best_gap, kMargin) << "expert " << l << " unit " << u;
      b1->value.at(u) = static_cast<float>(best);
    }
    row0 += rows[l];
  }
  const Tensor probe = RandomTensor({7, D}, 62);
  auto objective = [&]() { return testing::Dot(bank.Forward(x, rows), probe); };
  for (Parameter* p : ps) p->grad.Zero();
  const Tensor y = bank.Forward(x, rows);
  // Forward of row 0 by hand: W2 relu(W1 x + b1) + b2.
  for (int o = 0; o < D; ++o) {
    double v = ps[3]->value.at(o);
    for (int u = 0; u < H; ++u) {
      double pre = ps[1]->value.at(u);
      for (int d = 0; d < D; ++d) pre += x.at(d) * ps[0]->value.at(d * H + u);
      v += std::max(pre, 0.0) * ps[2]->value.at(u * D + o);
    }
    EXPECT_NEAR(y.at(o), v, 1e-5) << "output " << o;
  }
  const Tensor dx = bank.Backward(probe).Clone();
  // One step of h moves a pre-activation by h |x_d| (a weight), h |w| (an input) or h (a bias):
  // all below kMargin, so no difference quotient crosses a kink.
  GradCheckOptions opt;
  opt.step = 1e-2f;
  double largest = 1;
  for (int64_t i = 0; i < x.numel(); ++i) largest = std::max<double>(largest, std::abs(x.at(i)));
  for (int l = 0; l < 2; ++l)
    for (int64_t i = 0; i < ps[4 * l]->value.numel(); ++i)
      largest = std::max<double>(largest, std::abs(ps[4 * l]->value.at(i)));
  ASSERT_LT(opt.step * largest, kMargin);
  ExpectGradientsMatch("relu.dx", &x, dx, objective, opt);
  for (Parameter* p : ps) {
    const Tensor g = p->grad.Clone();
    ExpectGradientsMatch("relu." + p->name + "#" + std::to_string(p->global_expert_id), &p->value,
                         g, objective, opt);
  }
}

TEST(PmoeNet, ParametersAreListedOnceAndMoveTo) {
  for (bool use_moe : {true, false}) {
    proto::ModelConfig model = SmallModel(28, 7, 8, 4, 3, 16, 10);
    model.set_use_moe(use_moe);
    SelfCommunicator comm;
    PatchCnn net(model, &comm, 1);
    std::set<std::pair<std::string, int>> names;
    for (Parameter* p : net.Parameters())
      EXPECT_TRUE(names.insert({p->name, p->global_expert_id}).second) << p->name;
    EXPECT_NE(Find(net.Parameters(), "embed.w"), nullptr);
    EXPECT_NE(Find(net.Parameters(), "head.w"), nullptr);
    EXPECT_EQ(Find(net.Parameters(), "moe.router.w") != nullptr, use_moe);
    EXPECT_EQ(net.moe_layers().size(), use_moe ? 1u : 0u);
    net.MoveTo(Device::kCPU);  // a no-op move keeps the net usable
    net.SetMoeContext(Context(false, 0, 1));
    EXPECT_EQ(net.Forward(Images(2, 784, 3)).dim(1), 10);
  }
}

// ---------------------------------------------------------------------------------------------
// FLOPs and the shipped configs

proto::TrainConfig LoadConfig(const std::string& name) {
  proto::TrainConfig c;
  std::string err;
  EXPECT_TRUE(LoadTrainConfig(std::string(MOE_EP_SOURCE_DIR) + "/launcher/configs/" + name, "",
                              &c, &err))
      << err;
  return c;
}

TEST(PmoeNet, FlopsCountEveryExpertsLPatchesAgainstNDenseRows) {
  const proto::TrainConfig moe_cfg = LoadConfig("pmoe_tiny.pbtxt");
  const proto::TrainConfig dense_cfg = LoadConfig("cnn_tiny.pbtxt");
  SelfCommunicator comm;
  PatchCnn moe_net(moe_cfg.model(), &comm, 1), dense_net(dense_cfg.model(), &comm, 1);
  const double n = 16, P = 49, D = 64, C = 10, E = 8, l = 6, m = 256, h = m / E;
  EXPECT_DOUBLE_EQ(dense_net.FlopsPerImage(), 2 * (n * P * D + n * 2 * D * m + D * C));
  EXPECT_DOUBLE_EQ(moe_net.FlopsPerImage(),
                   2 * (n * P * D + n * D * E + E * l * 2 * D * h + D * C));
  // The expert layer itself costs l / n of the dense one (same total width m).
  EXPECT_LT(moe_net.FlopsPerImage(), dense_net.FlopsPerImage());
}

TEST(PmoeConfig, ShippedConfigsValidate) {
  for (const char* name : {"pmoe_tiny.pbtxt", "pmoe_two_phase.pbtxt", "cnn_tiny.pbtxt"}) {
    const proto::TrainConfig c = LoadConfig(name);
    EXPECT_EQ(c.model().family(), "pmoe") << name;
    const std::vector<std::string> errs = ValidateTrainConfig(c, 4);
    EXPECT_TRUE(errs.empty()) << name << ": " << (errs.empty() ? "" : errs[0]);
  }
}

TEST(PmoeConfig, ValidatorNamesEachBadField) {
  const proto::TrainConfig good = LoadConfig("pmoe_tiny.pbtxt");
  struct Bad {
    const char* field;
    void (*edit)(proto::TrainConfig*);
  };
  const std::vector<Bad> cases = {
      {"model.moe.routing=TOKEN_TOP_K",
       [](proto::TrainConfig* c) { c->mutable_model()->mutable_moe()->set_routing(proto::MoeConfig::TOKEN_TOP_K); }},
      {"model.moe.patch_top_l=16",
       [](proto::TrainConfig* c) { c->mutable_model()->mutable_moe()->set_patch_top_l(16); }},
      {"model.moe.patch_top_l=0",
       [](proto::TrainConfig* c) { c->mutable_model()->mutable_moe()->set_patch_top_l(0); }},
      {"model.moe.router_noise_scale=",
       [](proto::TrainConfig* c) { c->mutable_model()->mutable_moe()->set_router_noise_scale(1); }},
      {"model.moe.importance_loss_weight=",
       [](proto::TrainConfig* c) { c->mutable_model()->mutable_moe()->set_importance_loss_weight(0.005f); }},
      {"model.moe.dropless=true",
       [](proto::TrainConfig* c) { c->mutable_model()->mutable_moe()->set_dropless(true); }},
      {"model.pmoe.conv_channels=100",
       [](proto::TrainConfig* c) { c->mutable_model()->mutable_pmoe()->set_conv_channels(100); }},
      {"model.pmoe.router_phase_steps=50",  // the whole run would train the routers
       [](proto::TrainConfig* c) {
         c->set_steps(50);
         c->mutable_model()->mutable_pmoe()->set_recipe(proto::PmoeConfig::ROUTER_THEN_EXPERTS);
         c->mutable_model()->mutable_pmoe()->set_router_phase_steps(50);
       }},
      {"model.pmoe.recipe=ROUTER_THEN_EXPERTS",
       [](proto::TrainConfig* c) {
         c->mutable_model()->set_use_moe(false);
         c->mutable_model()->mutable_pmoe()->set_recipe(proto::PmoeConfig::ROUTER_THEN_EXPERTS);
       }},
  };
  for (const Bad& b : cases) {
    proto::TrainConfig c = good;
    b.edit(&c);
    std::vector<std::string> errs;
    ValidatePatchCnnConfig(c, &errs);
    const std::string want = std::string("config error: ") + b.field;
    EXPECT_TRUE(std::any_of(errs.begin(), errs.end(),
                            [&](const std::string& e) { return e.rfind(want, 0) == 0; }))
        << "no \"" << want << "...\" among " << errs.size() << " errors"
        << (errs.empty() ? "" : ": " + errs[0]);
  }
  // top_k is ignored by PATCH_TOP_L: any value the generic check accepts is fine.
  proto::TrainConfig c = good;
  c.mutable_model()->mutable_moe()->set_top_k(5);
  std::vector<std::string> errs;
  ValidatePatchCnnConfig(c, &errs);
  EXPECT_TRUE(errs.empty()) << errs[0];
}

}  // namespace
}  // namespace moe
