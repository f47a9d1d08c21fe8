// The MoE layer's backward, routing + dispatch + experts + combine + every auxiliary loss,
// against central finite differences, with and without dropped tokens. Runs on one process
// (SelfCommunicator: the exact semantics of an EP group of one); the multi-rank path is covered
// by the EP-invariance test, which compares it with this one.
#include <gtest/gtest.h>

#include "comm/self_communicator.h"
#include "models/moe/moe_layer.h"
#include "tests/unit/grad_check.h"

namespace moe {
namespace {

using testing::ExpectGradientsMatch;
using testing::GradCheckOptions;
using testing::RandomTensor;

struct Case {
  double capacity_factor;
  bool dropless;
  bool bpr;
  bool expect_drops;
};

class MoeLayerGradTest : public ::testing::TestWithParam<Case> {};

TEST_P(MoeLayerGradTest, MatchesFiniteDifferences) {
  const Case c = GetParam();
  SelfCommunicator comm;
  MoeLayerOptions o;
  o.dim = 6;
  o.hidden = 8;
  o.num_experts = 4;
  o.top_k = 2;
  o.group_tokens = 6;
  o.capacity_factor_train = c.capacity_factor;
  o.dropless = c.dropless;
  o.batch_prioritized = c.bpr;
  // Large aux weights so a wrong aux gradient cannot hide under the main term.
  o.importance_weight = 0.5f;
  o.load_weight = 0.5f;
  o.switch_weight = 0.5f;
  o.z_weight = 0.1f;
  MoeLayer layer("moe", o, &comm, /*seed=*/7);
  // A router with O(1) logits, so gates differ and their gradients matter.
  Parameter* router = layer.Parameters()[0];
  for (int64_t i = 0; i < router->value.numel(); ++i) router->value.at(i) *= 40.f;

  MoeStepContext ctx;
  ctx.training = true;  // with router noise: it is a fixed function of (step, group, token)
  ctx.step = 3;
  ctx.first_global_group = 5;
  ctx.num_global_groups = 2;
  layer.SetStepContext(ctx);

  Tensor x = RandomTensor({12, 6}, 101);
  const Tensor probe = RandomTensor({12, 6}, 202);
  auto objective = [&]() {
    Tensor y = layer.Forward(x);
    return testing::Dot(y, probe) + layer.metrics().aux_loss;
  };
  objective();
  if (c.expect_drops) {
    ASSERT_GT(layer.metrics().dropped, 0) << "this case must exercise dropped tokens";
  } else {
    ASSERT_EQ(layer.metrics().dropped, 0);
  }
  ASSERT_GT(layer.metrics().aux_loss, 0);

  for (Parameter* p : layer.Parameters()) p->grad.Zero();
  layer.Forward(x);
  const Tensor dx = layer.Backward(probe);
  std::vector<Tensor> grads;
  for (Parameter* p : layer.Parameters()) grads.push_back(p->grad.Clone());

  GradCheckOptions opt;
  // The objective is a float forward pass: its rounding noise eps ~ 3e-7 (measured: the
  // numeric slope of a router weight wanders by 3e-4 at h = 5e-4) reaches a central difference
  // as eps / h. At h = 5e-3 that is 6e-5, under rel_tol x abs_floor = 1e-4, while the truncation
  // error h^2 f''' / 6 stays near 0.3% (the same slope at h = 1e-2 and 5e-3 agree to 0.1%).
  opt.step = 5e-3f;
  opt.abs_floor = 5e-3;
  ExpectGradientsMatch("dx", &x, dx, objective, opt);
  const auto params = layer.Parameters();
  for (size_t i = 0; i < params.size(); ++i)
    ExpectGradientsMatch(params[i]->name + "#" + std::to_string(params[i]->global_expert_id),
                         &params[i]->value, grads[i], objective, opt);
}

INSTANTIATE_TEST_SUITE_P(Routing, MoeLayerGradTest,
                         ::testing::Values(Case{0.5, false, false, true},   // tight capacity
                                           Case{0.5, false, true, true},    // tight, BPR
                                           Case{4.0, false, false, false},  // room for all
                                           Case{1.0, true, false, false})); // dropless

// Conservation: every kept assignment lands in exactly one slot and the output of a token whose
// choices were all dropped is exactly zero (the residual carries it).
TEST(MoeLayer, DroppedTokensContributeZero) {
  SelfCommunicator comm;
  MoeLayerOptions o;
  o.dim = 4;
  o.hidden = 4;
  o.num_experts = 2;
  o.top_k = 1;
  o.group_tokens = 8;
  o.capacity_factor_train = 0.25;  // C = ceil(1 * 8 * 0.25 / 2) = 1 slot per expert
  MoeLayer layer("moe", o, &comm, 3);
  MoeStepContext ctx;
  ctx.num_global_groups = 1;
  layer.SetStepContext(ctx);
  Tensor x = RandomTensor({8, 4}, 9);
  Tensor y = layer.Forward(x);
  const MoeMetrics& m = layer.metrics();
  EXPECT_EQ(m.assignments, 8);
  EXPECT_EQ(m.tokens_per_expert[0] + m.tokens_per_expert[1], 2);
  EXPECT_EQ(m.dropped, 6);
  int zero_rows = 0;
  for (int t = 0; t < 8; ++t) {
    bool zero = true;
    for (int j = 0; j < 4; ++j) zero = zero && y.at(t * 4 + j) == 0.f;
    zero_rows += zero;
  }
  EXPECT_EQ(zero_rows, 6);
}

}  // namespace
}  // namespace moe
