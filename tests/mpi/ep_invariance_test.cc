// EP invariance of V-MoE (token top-k, BPR, dropless) and of expert-choice routing; the
// machinery is tests/mpi/ep_invariance_util.h.
#include "tests/mpi/ep_invariance_util.h"

namespace moe {
namespace {

using ep_invariance::ExpectEpInvariance;

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
