// The routing rules beyond V-MoE's token top-k, through the whole MoE layer (route, dispatch,
// experts, combine): hand-made routing cases (which row goes to which expert and slot, capacity,
// what is dropped or left unrouted) and finite-difference gradient checks of every rule,
// including its router-side losses. One process (SelfCommunicator); the multi-rank path of each
// rule is covered by the EP-invariance tests (tests/mpi/ep_invariance_*_test.cc).
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>

#include "comm/self_communicator.h"
#include "models/moe/moe_layer.h"
#include "tests/unit/grad_check.h"

namespace moe {
namespace {

using testing::ExpectGradientsMatch;
using testing::GradCheckOptions;
using testing::RandomTensor;

// Assignments of the last Forward, as (row, expert) -> gate.
std::map<std::pair<int64_t, int>, float> Kept(const MoeLayer& layer) {
  std::map<std::pair<int64_t, int>, float> m;
  layer.ForEachKeptAssignment([&m](int64_t row, int e, float g) { m[{row, e}] = g; });
  return m;
}

// Sets the router matrix [D, E] so that logits(x) = x W are chosen by hand.
void SetRouter(MoeLayer* layer, const std::vector<float>& w) {
  Parameter* router = layer->Parameters()[0];
  ASSERT_EQ(router->name, "moe.router.w");
  ASSERT_EQ(router->value.numel(), static_cast<int64_t>(w.size()));
  for (size_t i = 0; i < w.size(); ++i) router->value.at(i) = w[i];
}

MoeStepContext EvalContext() {
  MoeStepContext ctx;
  ctx.training = false;  // no noise: the hand-made cases are exact
  ctx.num_global_groups = 1;
  return ctx;
}

// Expert choice, case 7 of models/moe/README.md through the layer: with identity features and a
// router that makes softmax(x W) equal case 2's gates' order, each expert takes its top-C tokens.
TEST(MoeRules, ExpertChoiceTakesTopCPerExpert) {
  SelfCommunicator comm;
  MoeLayerOptions o;
  o.dim = 3;
  o.hidden = 4;
  o.num_experts = 3;
  o.group_tokens = 3;
  o.rule = RoutingRule::kExpertChoice;
  o.capacity_factor_eval = 2.0;  // C = ceil(3 * 2 / 3) = 2
  o.noise_scale = 0.f;
  MoeLayer layer("moe", o, &comm, 1);
  // logits = log of case 2's gates (rows = tokens): softmax restores proportions per token.
  const float g[3][3] = {{.4f, 1e-6f, .2f}, {.5f, .1f, .4f}, {.3f, .2f, .6f}};
  std::vector<float> w(9);
  for (int d = 0; d < 3; ++d)
    for (int e = 0; e < 3; ++e) w[d * 3 + e] = std::log(g[d][e]);
  SetRouter(&layer, w);
  layer.SetStepContext(EvalContext());
  Tensor x = Tensor::Zeros({3, 3});
  for (int t = 0; t < 3; ++t) x.at(t * 3 + t) = 1.f;  // token t's logits = row t of W
  layer.Forward(x);
  EXPECT_EQ(layer.CurrentCapacity(), 2);
  const auto kept = Kept(layer);
  std::set<std::pair<int64_t, int>> pairs;
  for (const auto& [k, v] : kept) pairs.insert(k);
  // Softmax per token of case 2's rows: e0 scores (.67,.5,.27) -> {0,1}; e1 (~0,.1,.18) -> {2,1};
  // e2 (.33,.4,.55) -> {2,1}.
  const std::set<std::pair<int64_t, int>> want = {{0, 0}, {1, 0}, {2, 1}, {1, 1}, {2, 2}, {1, 2}};
  EXPECT_EQ(pairs, want);
  EXPECT_EQ(layer.metrics().dropped, 0);
  EXPECT_EQ(layer.metrics().unrouted_rows, 0);
  EXPECT_EQ(layer.metrics().tokens_per_expert, (std::vector<int64_t>{2, 2, 2}));
}

// pMoE (case 9): each expert keeps exactly l patches per image, its gates sum to 1 per image,
// and a patch no expert kept has output exactly 0.
TEST(MoeRules, PatchTopLKeepsExactlyLPerImage) {
  SelfCommunicator comm;
  MoeLayerOptions o;
  o.dim = 4;
  o.hidden = 5;
  o.num_experts = 2;
  o.tokens_per_image = 4;
  o.group_tokens = 8;  // two images per routing group
  o.rule = RoutingRule::kPatchTopL;
  o.patch_top_l = 2;
  o.noise_scale = 0.f;
  MoeLayer layer("moe", o, &comm, 2);
  // Expert 0 scores feature 0, expert 1 feature 1.
  SetRouter(&layer, {1, 0, 0, 1, 0, 0, 0, 0});
  layer.SetStepContext(EvalContext());
  // Image 0: patch scores e0 = (3, 1, 2, 0), e1 = (0, 1, 0, 2) -> e0 {0, 2}, e1 {3, 1}.
  // Image 1: e0 = (0, 0, 5, 4), e1 = (0, 0, 5, 4) -> both {2, 3}; patches 0, 1 unrouted.
  const float f[8][2] = {{3, 0}, {1, 1}, {2, 0}, {0, 2}, {0, 0}, {0, 0}, {5, 5}, {4, 4}};
  Tensor x = RandomTensor({8, 4}, 5, 0.1f);
  for (int t = 0; t < 8; ++t) {
    x.at(t * 4 + 0) = f[t][0];
    x.at(t * 4 + 1) = f[t][1];
  }
  Tensor y = layer.Forward(x);
  const auto kept = Kept(layer);
  std::set<std::pair<int64_t, int>> pairs;
  for (const auto& [k, v] : kept) pairs.insert(k);
  const std::set<std::pair<int64_t, int>> want = {{0, 0}, {2, 0}, {3, 1}, {1, 1},
                                                  {6, 0}, {7, 0}, {6, 1}, {7, 1}};
  EXPECT_EQ(pairs, want);
  EXPECT_EQ(layer.CurrentCapacity(), 4);  // l = 2 patches x 2 images per expert per group
  EXPECT_EQ(layer.metrics().unrouted_rows, 2);
  for (int img = 0; img < 2; ++img)
    for (int e = 0; e < 2; ++e) {
      double s = 0;
      int n = 0;
      for (const auto& [k, g] : kept)
        if (k.second == e && k.first / 4 == img) s += g, ++n;
      EXPECT_EQ(n, 2) << "image " << img << " expert " << e;
      EXPECT_NEAR(s, 1.0, 1e-6) << "image " << img << " expert " << e;
    }
  // Image 0, expert 0: softmax over kept scores (3, 2).
  EXPECT_NEAR(kept.at({0, 0}), std::exp(3.0) / (std::exp(3.0) + std::exp(2.0)), 1e-6);
  for (int t : {4, 5})
    for (int j = 0; j < 4; ++j) EXPECT_EQ(y.at(t * 4 + j), 0.f) << "unrouted patch " << t;
}

// Mobile V-MoE (case 10): every token of an image has the same experts and gates, and capacity
// counts whole images (an image is kept or dropped as a whole).
TEST(MoeRules, PerImageRoutesWholeImages) {
  SelfCommunicator comm;
  MoeLayerOptions o;
  o.dim = 4;
  o.hidden = 4;
  o.num_experts = 2;
  o.top_k = 1;
  o.tokens_per_image = 3;
  o.group_tokens = 12;  // four images per group
  o.rule = RoutingRule::kPerImage;
  o.capacity_factor_eval = 0.5;  // ceil(1 * 4 * 0.5 / 2) = 1 image per expert
  o.noise_scale = 0.f;
  MoeLayer layer("moe", o, &comm, 3);
  layer.SetStepContext(EvalContext());
  Tensor x = RandomTensor({12, 4}, 11);
  Tensor y = layer.Forward(x);
  EXPECT_EQ(layer.CurrentCapacity(), 3);  // one image of 3 tokens
  const auto kept = Kept(layer);
  std::map<int64_t, std::pair<int, float>> by_row;
  for (const auto& [k, g] : kept) by_row[k.first] = {k.second, g};
  for (int img = 0; img < 4; ++img) {
    const bool any = by_row.count(img * 3) > 0;
    for (int t = 1; t < 3; ++t) {
      ASSERT_EQ(by_row.count(img * 3 + t) > 0, any) << "image " << img << " split by capacity";
      if (any) EXPECT_EQ(by_row[img * 3 + t], by_row[img * 3]) << "image " << img;
    }
  }
  // At most one image of three tokens per expert; the rest dropped as whole images.
  EXPECT_EQ(by_row.size() % 3, 0u);
  EXPECT_LE(by_row.size(), 6u);
  EXPECT_GE(by_row.size(), 3u);
  EXPECT_EQ(layer.metrics().dropped, 12 - static_cast<int64_t>(by_row.size()));
}

// Conditional (case 11): equal attribute vectors give equal experts and gates, and the top-2
// gates are renormalised to sum to 1, whatever the tokens are.
TEST(MoeRules, AttributeRoutingDependsOnAttributesOnly) {
  SelfCommunicator comm;
  MoeLayerOptions o;
  o.dim = 6;
  o.hidden = 4;
  o.num_experts = 4;
  o.top_k = 2;
  o.group_tokens = 6;
  o.rule = RoutingRule::kAttribute;
  o.attribute_dim = 3;
  o.capacity_factor_eval = 4.0;
  MoeLayer layer("moe", o, &comm, 4);
  Tensor attrs = Tensor::Zeros({6, 3});
  const float bits[6][3] = {{1, 0, 1}, {0, 1, 0}, {1, 0, 1}, {0, 1, 0}, {1, 1, 0}, {1, 0, 1}};
  for (int t = 0; t < 6; ++t)
    for (int j = 0; j < 3; ++j) attrs.at(t * 3 + j) = bits[t][j];
  MoeStepContext ctx = EvalContext();
  ctx.attributes = &attrs;
  layer.SetStepContext(ctx);
  layer.Forward(RandomTensor({6, 6}, 13));
  std::map<int64_t, std::map<int, float>> by_row;
  for (const auto& [k, g] : Kept(layer)) by_row[k.first][k.second] = g;
  ASSERT_EQ(by_row.size(), 6u);
  for (const auto& [row, gates] : by_row) {
    EXPECT_EQ(gates.size(), 2u);
    double s = 0;
    for (const auto& [e, g] : gates) s += g;
    EXPECT_NEAR(s, 1.0, 1e-6) << "row " << row;
  }
  EXPECT_EQ(by_row[0], by_row[2]);
  EXPECT_EQ(by_row[0], by_row[5]);
  EXPECT_EQ(by_row[1], by_row[3]);
}

// ---------------------------------------------------------------------------------------------
// Gradient checks: objective = <y, probe> + aux losses (incl. super-class CE), w.r.t. the input
// and every parameter, in training mode (noise is a fixed function of the step and indices).

struct RuleCase {
  const char* name;
  MoeLayerOptions options;
  bool with_attributes = false;
  bool with_superclass = false;
  // Scales the N(0, 0.02) router so logits are O(1) and gates differ. The attribute router's
  // input is LayerNorm-ed (unit scale), so it needs less.
  float router_scale = 40.f;
  // Learned noise: W_noise ~ N(0, scale^2) instead of its zero init, so softplus(x W_noise)
  // varies with x and the dx path through W_noise carries gradient.
  float noise_weight_scale = 0.f;
};

MoeLayerOptions Base() {
  MoeLayerOptions o;
  o.dim = 6;
  o.hidden = 8;
  o.num_experts = 4;
  o.top_k = 2;
  o.group_tokens = 6;
  o.importance_weight = 0.f;
  o.load_weight = 0.f;
  return o;
}

std::vector<RuleCase> RuleCases() {
  std::vector<RuleCase> cs;
  {
    RuleCase c{"expert_choice", Base()};
    c.options.rule = RoutingRule::kExpertChoice;
    c.options.capacity_factor_train = 1.5;  // C = 3 of 6 tokens per expert
    c.options.z_weight = 0.1f;
    c.options.switch_weight = 0.5f;
    cs.push_back(c);
  }
  for (bool over_all : {false, true}) {
    RuleCase c{over_all ? "patch_top_l_softmax_all" : "patch_top_l", Base()};
    c.options.rule = RoutingRule::kPatchTopL;
    c.options.tokens_per_image = 3;
    c.options.patch_top_l = 2;
    c.options.patch_gate_over_all = over_all;
    c.options.noise_scale = 0.f;
    c.options.importance_weight = 0.5f;
    cs.push_back(c);
  }
  {
    RuleCase c{"patch_top_l_hard_gates", Base()};
    c.options.rule = RoutingRule::kPatchTopL;
    c.options.tokens_per_image = 3;
    c.options.patch_top_l = 2;
    c.options.hard_gates = true;
    c.options.noise_scale = 0.f;
    cs.push_back(c);
  }
  for (bool renorm : {false, true}) {
    RuleCase c{renorm ? "per_image_renormalised" : "per_image", Base()};
    c.options.rule = RoutingRule::kPerImage;
    c.options.tokens_per_image = 3;
    c.options.capacity_factor_train = 0.75;  // 2 images per group, k=2, E=4: drops
    c.options.importance_weight = 0.5f;
    c.options.load_weight = 0.5f;
    c.options.superclass_weight = 0.7f;
    c.options.renormalise_gates = renorm;
    c.with_superclass = true;
    cs.push_back(c);
  }
  for (bool with_token : {false, true}) {
    RuleCase c{with_token ? "attribute_plus_token" : "attribute", Base()};
    c.options.rule = RoutingRule::kAttribute;
    c.options.attribute_dim = 3;
    c.options.attribute_with_token = with_token;
    c.router_scale = 5.f;
    c.options.capacity_factor_train = 1.0;
    c.options.importance_weight = 0.5f;
    c.options.load_weight = 0.5f;
    c.with_attributes = true;
    cs.push_back(c);
  }
  // Shazeer's noisy top-k (gates renormalised by the rule) with seed 004's balance loss and the
  // losses that read the noisy logits, so W_noise gets every kind of gradient; with drops, BPR,
  // dropless. Then the balance loss alone on V-MoE's plain gates and on per-image gates.
  for (const char* variant : {"drops", "bpr", "dropless"}) {
    RuleCase c{"", Base()};
    c.name = variant == std::string("drops") ? "shazeer_drops"
             : variant == std::string("bpr") ? "shazeer_bpr" : "shazeer_dropless";
    c.options.noise = RouterNoise::kLearnedSoftplus;
    c.options.capacity_factor_train = 0.75;
    c.options.batch_prioritized = variant == std::string("bpr");
    c.options.dropless = variant == std::string("dropless");
    c.options.balance_sq_weight = 0.5f;
    c.options.switch_weight = 0.5f;
    // The z-loss of the x40 logits is O(10): at weight 0.1 its float32 rounding alone put ~1e-4
    // on the step-2e-3 differences (measured), the tolerance's edge; 0.01 keeps the path.
    c.options.z_weight = 0.01f;
    c.options.importance_weight = 0.5f;
    c.noise_weight_scale = 0.5f;
    cs.push_back(c);
  }
  {
    RuleCase c{"token_top_k_balance_sq", Base()};
    c.options.capacity_factor_train = 0.75;
    c.options.balance_sq_weight = 0.5f;
    c.options.load_weight = 0.5f;
    cs.push_back(c);
  }
  {
    RuleCase c{"per_image_balance_sq", Base()};
    c.options.rule = RoutingRule::kPerImage;
    c.options.tokens_per_image = 3;
    c.options.capacity_factor_train = 0.75;
    c.options.balance_sq_weight = 0.5f;
    cs.push_back(c);
  }
  {
    RuleCase c{"token_top_k_renormalised", Base()};
    c.options.renormalise_gates = true;
    c.options.capacity_factor_train = 0.75;
    c.options.z_weight = 0.1f;
    cs.push_back(c);
  }
  return cs;
}

class MoeRuleGradTest : public ::testing::TestWithParam<RuleCase> {};

TEST_P(MoeRuleGradTest, MatchesFiniteDifferences) {
  const RuleCase c = GetParam();
  SelfCommunicator comm;
  MoeLayer layer("moe", c.options, &comm, 17);
  for (Parameter* p : layer.Parameters()) {
    if (p->name == "moe.router.w")
      for (int64_t i = 0; i < p->value.numel(); ++i) p->value.at(i) *= c.router_scale;
    if (p->name == "moe.router.w_noise")
      p->value.CopyFrom(RandomTensor(p->value.shape(), 404, c.noise_weight_scale));
  }

  const int64_t rows = 12;  // two routing groups
  Tensor attrs = RandomTensor({rows, 3}, 303);
  for (int64_t i = 0; i < attrs.numel(); ++i) attrs.at(i) = attrs.at(i) > 0 ? 1.f : 0.f;
  // No all-zero attribute vector: LayerNorm of the bias alone (zero at init) has slope
  // 1/sqrt(eps), where no finite difference is meaningful. Real attribute vectors always set
  // their token-type bit.
  for (int64_t t = 0; t < rows; ++t) attrs.at(t * 3) = 1.f;
  std::vector<int> superclass = {1, 3, 0, 2};  // one per image (tokens_per_image 3)
  MoeStepContext ctx;
  ctx.training = true;
  // The noise draw (NormalF32 of step, group, row, expert) must leave every routing decision
  // farther than the step (2e-3) from a tie, or a central difference straddles a kink. Of the
  // draws of steps 1..10, step 8's passes in every case; step 2's (used with the earlier double
  // Box-Muller draw) puts attribute and shazeer_bpr within 5% of the tolerance's edge.
  ctx.step = 8;
  ctx.first_global_group = 3;
  ctx.num_global_groups = 2;
  ctx.image_loss_scale = 0.25f;
  if (c.with_attributes) ctx.attributes = &attrs;
  if (c.with_superclass) ctx.superclass = &superclass;
  layer.SetStepContext(ctx);

  Tensor x = RandomTensor({rows, 6}, 101);
  const Tensor probe = RandomTensor({rows, 6}, 202);
  auto objective = [&]() {
    Tensor y = layer.Forward(x);
    return testing::Dot(y, probe) + layer.metrics().aux_loss;
  };
  objective();
  if (c.with_superclass) ASSERT_GT(layer.metrics().superclass_loss, 0);
  if (c.options.balance_sq_weight > 0) ASSERT_GT(layer.metrics().balance_sq_loss, 0);
  if (c.options.capacity_factor_train < 1 && !c.options.dropless)
    ASSERT_GT(layer.metrics().dropped, 0) << "this case must exercise dropped choices";

  for (Parameter* p : layer.Parameters()) p->grad.Zero();
  layer.Forward(x);
  const Tensor dx = layer.Backward(probe);
  std::vector<Tensor> grads;
  for (Parameter* p : layer.Parameters()) grads.push_back(p->grad.Clone());

  GradCheckOptions opt;
  opt.step = 2e-3f;
  opt.abs_floor = 5e-3;
  ExpectGradientsMatch(std::string(c.name) + ".dx", &x, dx, objective, opt);
  const auto params = layer.Parameters();
  for (size_t i = 0; i < params.size(); ++i)
    ExpectGradientsMatch(std::string(c.name) + "." + params[i]->name + "#" +
                             std::to_string(params[i]->global_expert_id),
                         &params[i]->value, grads[i], objective, opt);
  if (c.options.hard_gates) {
    double router_grad = 0;
    for (int64_t i = 0; i < grads[0].numel(); ++i) router_grad += std::abs(grads[0].at(i));
    EXPECT_EQ(router_grad, 0.0) << "hard gates: the router must get no gradient";
  }
}

INSTANTIATE_TEST_SUITE_P(Rules, MoeRuleGradTest, ::testing::ValuesIn(RuleCases()),
                         [](const ::testing::TestParamInfo<RuleCase>& info) {
                           return std::string(info.param.name);
                         });

}  // namespace
}  // namespace moe
