// Shazeer et al. 2017's noisy top-k gating (MoeLayerOptions::noise = kLearnedSoftplus) and seed
// 004's squared-deviation balance loss through the MoE layer, on hand-made inputs whose H, G and
// loss are worked out below from the paper's formulas (models/moe/README.md, cases 12 and 13).
// Their gradients are checked in moe_rules_test.cc (MoeRuleGradTest), the multi-rank path in
// tests/mpi/ep_invariance_test.cc.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "comm/self_communicator.h"
#include "models/moe/moe_layer.h"

namespace moe {
namespace {

void SetParam(MoeLayer* layer, const std::string& name, const std::vector<float>& v) {
  for (Parameter* p : layer->Parameters()) {
    if (p->name != name) continue;
    ASSERT_EQ(p->value.numel(), static_cast<int64_t>(v.size())) << name;
    for (size_t i = 0; i < v.size(); ++i) p->value.at(i) = v[i];
    return;
  }
  FAIL() << "no parameter " << name;
}

// Row -> (expert -> gate) of the last Forward's kept assignments.
std::map<int64_t, std::map<int, float>> GatesByRow(const MoeLayer& layer) {
  std::map<int64_t, std::map<int, float>> m;
  layer.ForEachKeptAssignment([&m](int64_t row, int e, float g) { m[row][e] = g; });
  return m;
}

// D = E = 4, k = 2, one group of n = 2 rows x0 = e_0, x1 = e_1 (unit vectors), so row t's clean
// logits x_t W_g are row t of W_g and its noise pre-activation x_t W_noise is row t of W_noise.
MoeLayerOptions TinyShazeer() {
  MoeLayerOptions o;
  o.dim = 4;
  o.hidden = 3;
  o.num_experts = 4;
  o.top_k = 2;
  o.group_tokens = 2;
  o.capacity_factor_train = o.capacity_factor_eval = 4.0;  // C = 4: nothing dropped
  o.noise = RouterNoise::kLearnedSoftplus;
  o.importance_weight = 0.f;
  o.load_weight = 0.f;
  return o;
}

Tensor UnitRows() {
  Tensor x = Tensor::Zeros({2, 4});
  x.at(0) = 1.f;      // x0 = e_0
  x.at(4 + 1) = 1.f;  // x1 = e_1
  return x;
}

MoeStepContext Training(int64_t step) {
  MoeStepContext ctx;
  ctx.training = true;
  ctx.step = step;
  ctx.first_global_group = 3;
  ctx.num_global_groups = 1;
  return ctx;
}

// Case 12. W_g rows: x0 -> [ln 1, ln 2, ln 3, ln 4], x1 -> [ln 3, ln 1, ln 1, ln 1]. W_noise = -30
// everywhere: softplus(-30) = 9.4e-14, so H = x W_g + N(0,1) * 9.4e-14 equals the clean logits
// in float32 (their spacing near ln 2 is 6e-8), whatever the draw.
//   KeepTopK(H0, 2) keeps e3, e2: G0 = softmax over (ln 3, ln 4) = [0, 0, 3/7, 4/7]
//   KeepTopK(H1, 2) keeps e0 and, of the tied e1..e3, e1 (ties to the lower id): G1 = [3/4, 1/4, 0, 0]
//   (V-MoE's unnormalised gates would be 4/10, 3/10 and 3/6, 1/6.)
//   mean G = [3/8, 1/8, 3/14, 2/7]; 1/E - mean = [-1/8, 1/8, 1/28, -1/28]
//   L = 2/64 + 2/784 = 0.0338010204...; aux_loss = lambda L / (groups = 1).
TEST(NoisyTopK, Case12GatesAreSoftmaxOverKeptKAndBalanceSqLoss) {
  SelfCommunicator comm;
  MoeLayerOptions o = TinyShazeer();
  o.balance_sq_weight = 0.5f;
  MoeLayer layer("moe", o, &comm, 11);
  const float l1 = 0.f, l2 = std::log(2.f), l3 = std::log(3.f), l4 = std::log(4.f);
  SetParam(&layer, "moe.router.w", {l1, l2, l3, l4, l3, l1, l1, l1, 0, 0, 0, 0, 0, 0, 0, 0});
  SetParam(&layer, "moe.router.w_noise", std::vector<float>(16, -30.f));
  layer.SetStepContext(Training(7));
  layer.Forward(UnitRows());
  const auto g = GatesByRow(layer);
  const std::map<int64_t, std::map<int, float>> want = {{0, {{2, 3.f / 7}, {3, 4.f / 7}}},
                                                        {1, {{0, .75f}, {1, .25f}}}};
  ASSERT_EQ(g.size(), want.size());
  for (const auto& [row, gates] : want) {
    ASSERT_EQ(g.at(row).size(), gates.size()) << "row " << row;
    for (const auto& [e, v] : gates) EXPECT_NEAR(g.at(row).at(e), v, 1e-6) << row << "," << e;
  }
  const double L = 2.0 / 64 + 2.0 / 784;
  EXPECT_NEAR(L, 0.0338010204, 1e-10);  // the arithmetic above
  EXPECT_NEAR(layer.metrics().balance_sq_loss, L, 1e-6);
  EXPECT_NEAR(layer.metrics().aux_loss, 0.5 * L, 1e-6);
}

// Case 13: the noise's std is softplus(x W_noise), on the same N(0, 1) draws as V-MoE's fixed
// std. With W_g = 0, H = n s and the kept gates give log(G_a / G_b) = H_a - H_b = s (n_a - n_b).
// A V-MoE layer (same name, seed, step, group) with std sigma = 1/E = 0.25 and the same
// renormalised gates gives sigma (n_a - n_b) on the same experts, so the ratio is s / sigma:
//   x0: W_noise row 0 = ln(e - 1): s = softplus(ln(e - 1)) = ln(e) = 1  -> ratio 4
//   x1: W_noise row 1 = 0 (the paper's zero init): s = ln 2             -> ratio 4 ln 2 = 2.7726
// At evaluation there is no noise: all four gates are 1/2.
TEST(NoisyTopK, Case13NoiseStdIsSoftplusOfXWnoiseOnTheFixedDraws) {
  SelfCommunicator comm;
  MoeLayerOptions fixed = TinyShazeer();
  fixed.noise = RouterNoise::kFixed;
  fixed.noise_scale = 1.f;
  fixed.renormalise_gates = true;
  MoeLayer shazeer("moe", TinyShazeer(), &comm, 5), vmoe("moe", fixed, &comm, 5);
  const float a = std::log(std::exp(1.f) - 1.f);
  SetParam(&shazeer, "moe.router.w", std::vector<float>(16, 0.f));
  SetParam(&vmoe, "moe.router.w", std::vector<float>(16, 0.f));
  SetParam(&shazeer, "moe.router.w_noise", {a, a, a, a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0});
  for (MoeLayer* l : {&shazeer, &vmoe}) {
    l->SetStepContext(Training(9));
    l->Forward(UnitRows());
  }
  const auto gs = GatesByRow(shazeer), gv = GatesByRow(vmoe);
  const double want[2] = {4.0, 4.0 * std::log(2.0)};
  for (int64_t row = 0; row < 2; ++row) {
    const auto& s = gs.at(row);
    const auto& v = gv.at(row);
    ASSERT_EQ(s.size(), 2u);
    ASSERT_EQ(s.begin()->first, v.begin()->first) << "row " << row << ": same kept experts";
    ASSERT_EQ(s.rbegin()->first, v.rbegin()->first) << "row " << row;
    const double ls = std::log(s.begin()->second / s.rbegin()->second);
    const double lv = std::log(v.begin()->second / v.rbegin()->second);
    ASSERT_GT(std::abs(lv), 1e-3) << "row " << row << ": the draw must separate the experts";
    // Each log-ratio is within ~2e-7 (two float32 gates, 6e-8 relative each), so ls / lv is
    // within (1 + 4) 2e-7 / |lv| of s / sigma; twice that.
    EXPECT_NEAR(ls / lv, want[row], 2e-6 / std::abs(lv)) << "row " << row;
  }
  MoeStepContext eval = Training(9);
  eval.training = false;
  shazeer.SetStepContext(eval);
  shazeer.Forward(UnitRows());
  for (const auto& [row, gates] : GatesByRow(shazeer))
    for (const auto& [e, v] : gates) EXPECT_EQ(v, 0.5f) << row << "," << e;
}

// W_noise is a dense router parameter, zero at init (the paper's choice), and only exists with
// learned noise, so every other configuration keeps its parameter list.
TEST(NoisyTopK, WnoiseIsADenseZeroInitialisedParameter) {
  SelfCommunicator comm;
  MoeLayer shazeer("moe", TinyShazeer(), &comm, 5);
  MoeLayerOptions fixed = TinyShazeer();
  fixed.noise = RouterNoise::kFixed;
  MoeLayer vmoe("moe", fixed, &comm, 5);
  const auto ps = shazeer.Parameters();
  ASSERT_EQ(ps.size(), vmoe.Parameters().size() + 1);
  EXPECT_EQ(ps[1]->name, "moe.router.w_noise");
  EXPECT_FALSE(ps[1]->is_expert());
  EXPECT_EQ(ps[1]->value.shape(), (std::vector<int64_t>{4, 4}));
  for (int64_t i = 0; i < ps[1]->value.numel(); ++i) EXPECT_EQ(ps[1]->value.at(i), 0.f);
}

}  // namespace
}  // namespace moe
