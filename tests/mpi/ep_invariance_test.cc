// EP invariance of V-MoE (token top-k, BPR, dropless, the training recipe: augmentation, label
// smoothing, stochastic depth), of Shazeer's noisy top-k with seed 004's balance loss, and of
// expert-choice routing; the machinery is
// tests/mpi/ep_invariance_util.h.
#include "models/nets/vision_transformer.h"
#include "tests/mpi/ep_invariance_util.h"

namespace moe {
namespace {

using ep_invariance::ExpectEpInvariance;

// Shazeer et al. 2017: learned softplus noise (its N(0, 1) draws keyed on step, global group,
// row and expert, so the layouts agree) and gates softmax over the kept k, with seed 004's
// balance loss, whose gradient reaches W_r and W_noise. The load loss assumes a fixed std.
void ShazeerNoisyTopK(proto::TrainConfig* c) {
  auto* moe = c->mutable_model()->mutable_moe();
  moe->set_router_noise(proto::MoeConfig::LEARNED_SOFTPLUS);
  moe->set_load_loss_weight(0);
  moe->set_balance_sq_loss_weight(0.01f);
}

// The config reaches MoeLayerOptions through MoeOptionsFromConfig (models/nets); without that
// mapping these runs would compare plain V-MoE with itself, so the tests check it first.
bool GenericTopKFieldsMapped() {
  proto::TrainConfig c = ep_invariance::SmallVmoe(1, 8);
  ShazeerNoisyTopK(&c);
  const MoeLayerOptions o = MoeOptionsFromConfig(c.model());
  return o.noise == RouterNoise::kLearnedSoftplus && o.balance_sq_weight > 0;
}

TEST(EpInvariance, Ep4) { ExpectEpInvariance(4, nullptr); }
TEST(EpInvariance, Ep2Dp2) { ExpectEpInvariance(2, nullptr); }
TEST(EpInvariance, Ep4BatchPrioritized) {
  ExpectEpInvariance(4, [](proto::TrainConfig* c) {
    c->mutable_model()->mutable_moe()->set_batch_prioritized_routing(true);
  });
}
TEST(EpInvariance, Ep4Dropless) {
  ExpectEpInvariance(4, [](proto::TrainConfig* c) {
    c->mutable_model()->mutable_moe()->set_dropless(true);
  });
}
TEST(EpInvariance, Ep4ShazeerNoisyTopK) {
  ASSERT_TRUE(GenericTopKFieldsMapped())
      << "model.moe.router_noise / balance_sq_loss_weight are not mapped into MoeLayerOptions "
         "(models/nets/vision_transformer.cc, MoeOptionsFromConfig)";
  ExpectEpInvariance(4, ShazeerNoisyTopK);
}
TEST(EpInvariance, Ep2Dp2ShazeerNoisyTopK) {
  ASSERT_TRUE(GenericTopKFieldsMapped())
      << "model.moe.router_noise / balance_sq_loss_weight are not mapped into MoeLayerOptions "
         "(models/nets/vision_transformer.cc, MoeOptionsFromConfig)";
  ExpectEpInvariance(2, ShazeerNoisyTopK);
}
TEST(EpInvariance, Ep4WithRecipe) {
  ep_invariance::ExpectEpInvarianceWithRecipe(4, ep_invariance::SmallVmoe);
}
TEST(EpInvariance, Ep2Dp2WithRecipe) {
  ep_invariance::ExpectEpInvarianceWithRecipe(2, ep_invariance::SmallVmoe);
}
TEST(EpInvariance, Ep4ExpertChoice) {
  ExpectEpInvariance(
      4,
      [](proto::TrainConfig* c) {
        auto* moe = c->mutable_model()->mutable_moe();
        moe->set_routing(proto::MoeConfig::EXPERT_CHOICE);
        moe->set_capacity_factor_train(2.0);  // C = 2 n / E, Zhou et al.'s typical c
        moe->set_load_loss_weight(0);         // expert choice uses no balance loss
        moe->set_importance_loss_weight(0);
        moe->set_switch_loss_weight(0);
      },
      nullptr, /*expect_drops=*/false);
}

}  // namespace
}  // namespace moe
