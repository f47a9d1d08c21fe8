// The host routing planners keep one RoutingState across steps (RoutingState::Reset keeps the
// vectors' memory). A layer that has already run steps of another kind must route, combine and
// differentiate exactly as a fresh layer does: the same bits.
#include <gtest/gtest.h>

#include <vector>

#include "comm/self_communicator.h"
#include "models/moe/moe_layer.h"
#include "tests/unit/grad_check.h"

namespace moe {
namespace {

MoeLayerOptions Options(bool learned_noise) {
  MoeLayerOptions o;
  o.dim = 6;
  o.hidden = 5;
  o.num_experts = 4;
  o.top_k = 2;
  o.group_tokens = 8;
  o.capacity_factor_train = 1.0;  // small enough that assignments drop
  o.batch_prioritized = true;
  o.noise = learned_noise ? RouterNoise::kLearnedSoftplus : RouterNoise::kFixed;
  o.load_weight = learned_noise ? 0.f : 0.005f;  // the load loss assumes the fixed std
  o.balance_sq_weight = learned_noise ? 0.01f : 0.f;  // d_gate_aux only with this loss
  return o;
}

MoeStepContext Step(bool training, int64_t step) {
  MoeStepContext ctx;
  ctx.training = training;
  ctx.step = step;
  ctx.num_global_groups = 2;
  return ctx;
}

std::vector<float> Values(const Tensor& t) { return std::vector<float>(t.data(), t.data() + t.numel()); }

// One step (Forward, Backward) on `layer`; its output, input gradient and parameter gradients,
// concatenated. An evaluation step has no noise (the noise vectors stay empty); its gradient is
// what a gradient check in evaluation mode reads.
std::vector<float> OneStep(MoeLayer* layer, const Tensor& x, int64_t step, bool training = true) {
  layer->SetStepContext(Step(training, step));
  for (Parameter* p : layer->Parameters()) p->grad.Fill(0.f);
  std::vector<float> out = Values(layer->Forward(x));
  const std::vector<float> dx = Values(layer->Backward(testing::RandomTensor({16, 6}, 31)));
  out.insert(out.end(), dx.begin(), dx.end());
  for (Parameter* p : layer->Parameters()) {
    const std::vector<float> g = Values(p->grad);
    out.insert(out.end(), g.begin(), g.end());
  }
  out.push_back(static_cast<float>(layer->metrics().aux_loss));
  out.push_back(static_cast<float>(layer->metrics().dropped));
  return out;
}

TEST(RoutingStateReuse, AfterOtherStepsALayerRoutesAsAFreshOne) {
  for (bool learned_noise : {false, true}) {
    SCOPED_TRACE(learned_noise ? "learned softplus noise, balance loss" : "fixed noise, load loss");
    SelfCommunicator comm;
    MoeLayer used("moe", Options(learned_noise), &comm, 7);
    MoeLayer fresh("moe", Options(learned_noise), &comm, 7);
    const Tensor x1 = testing::RandomTensor({16, 6}, 5), x2 = testing::RandomTensor({16, 6}, 9);
    // `used`: a training step, then an evaluation step (no noise).
    OneStep(&used, x1, 3);
    EXPECT_EQ(OneStep(&used, x2, 4, /*training=*/false), OneStep(&fresh, x2, 4, false))
        << "evaluation after a training step";
    // Then a training step on both: same step, same input.
    MoeLayer fresh2("moe", Options(learned_noise), &comm, 7);
    EXPECT_EQ(OneStep(&used, x2, 5), OneStep(&fresh2, x2, 5)) << "training after an evaluation";
  }
}

}  // namespace
}  // namespace moe
