// EP invariance of pMoE (family "pmoe", PATCH_TOP_L routing): training on 4 ranks as EP=4 or
// EP=2 x DP=2 equals one rank replaying the global batch, for both recipes. The two-phase run
// trains the routers alone on their own loss (no MoE layer, no all-to-all; the router weight is
// dense, so it is all-reduced over the world) in steps 0-1 of the harness's 5, then switches to
// frozen routers and embedding, hard gates and fresh experts, so both phases and the switch are
// covered, with ReLU experts (pMoE's default) and with GELU, and with overlapping patches pooled
// per region (pmoe.patch_stride, pmoe.pool_grid). pMoE fills every expert slot by construction:
// nothing is dropped.
#include "models/nets/patch_cnn.h"
#include "tests/mpi/ep_invariance_util.h"

namespace moe {
namespace {

using ep_invariance::ExpectEpInvariance;

// A small pMoE on Fashion-MNIST: n = 16 patches of 7x7, E = 8 experts of 8 filters (m = 64),
// l = 6, four images per routing group.
proto::TrainConfig SmallPmoe(int ep_size, int batch_per_rank) {
  proto::TrainConfig c;
  auto* m = c.mutable_model();
  m->set_family("pmoe");
  m->set_patch_size(7);
  m->set_hidden_dim(16);
  m->set_use_moe(true);
  auto* moe = m->mutable_moe();
  moe->set_num_experts(8);
  moe->set_routing(proto::MoeConfig::PATCH_TOP_L);
  moe->set_patch_top_l(6);
  moe->set_router_noise_scale(0);
  moe->set_importance_loss_weight(0);
  moe->set_load_loss_weight(0);
  moe->set_group_size_images(4);
  m->mutable_pmoe()->set_conv_channels(64);
  c.mutable_parallel()->set_ep_size(ep_size);
  c.mutable_data()->set_batch_per_rank(batch_per_rank);
  c.mutable_optimizer()->set_warmup_steps(1);
  c.mutable_optimizer()->set_learning_rate(0.003f);
  c.set_steps(ep_invariance::kSteps);
  c.set_seed(77);
  return c;
}

void TwoPhase(proto::TrainConfig* c) {
  c->mutable_model()->mutable_pmoe()->set_recipe(proto::PmoeConfig::ROUTER_THEN_EXPERTS);
  c->mutable_model()->mutable_pmoe()->set_router_phase_steps(2);
}

void TwoPhaseGelu(proto::TrainConfig* c) {
  TwoPhase(c);
  c->mutable_model()->mutable_pmoe()->set_expert_activation(proto::PmoeConfig::GELU);
}

void GateOverAll(proto::TrainConfig* c) {
  c->mutable_model()->mutable_moe()->set_patch_gate_over_all(true);
}

// Overlapping 7x7 patches every 3 pixels (n = 64) pooled over 2 x 2 regions (head [4D, C]).
void StrideAndRegions(proto::TrainConfig* c) {
  c->mutable_model()->mutable_pmoe()->set_patch_stride(3);
  c->mutable_model()->mutable_pmoe()->set_pool_grid(2);
}

TEST(EpInvariancePmoe, Ep4Joint) { ExpectEpInvariance(4, nullptr, SmallPmoe, false); }
TEST(EpInvariancePmoe, Ep2Dp2Joint) { ExpectEpInvariance(2, nullptr, SmallPmoe, false); }
TEST(EpInvariancePmoe, Ep4TwoPhase) { ExpectEpInvariance(4, TwoPhase, SmallPmoe, false); }
TEST(EpInvariancePmoe, Ep2Dp2TwoPhase) { ExpectEpInvariance(2, TwoPhase, SmallPmoe, false); }
TEST(EpInvariancePmoe, Ep4TwoPhaseGelu) { ExpectEpInvariance(4, TwoPhaseGelu, SmallPmoe, false); }
TEST(EpInvariancePmoe, Ep4GateOverAll) { ExpectEpInvariance(4, GateOverAll, SmallPmoe, false); }
TEST(EpInvariancePmoe, Ep4StrideAndRegions) {
  ExpectEpInvariance(4, StrideAndRegions, SmallPmoe, false);
}
TEST(EpInvariancePmoe, Ep2Dp2StrideAndRegions) {
  ExpectEpInvariance(2, StrideAndRegions, SmallPmoe, false);
}

}  // namespace
}  // namespace moe
