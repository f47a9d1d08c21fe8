// EP invariance of Sparse-MLP (family "mixer"): MoE_S routes channel vectors (B*C1 rows of
// width S1), MoE_C routes patches (B*S rows of width C), both in groups of group_size_images
// images; the distributed run must equal the 1-rank replay. The machinery is
// tests/mpi/ep_invariance_util.h. The recipe case adds stochastic depth on every block's residuals
// (the sparse ones included), augmentation and label smoothing.
#include "tests/mpi/ep_invariance_util.h"

namespace moe {
namespace {

using ep_invariance::ExpectEpInvariance;

// 3 blocks, the last 2 sparse: S = 16 patches, C = 16 channels (S1 = 32, C1 = 8), 8 experts.
proto::TrainConfig SmallSparseMlp(int ep_size, int batch_per_rank) {
  proto::TrainConfig c = ep_invariance::SmallVmoe(ep_size, batch_per_rank);
  auto* m = c.mutable_model();
  m->set_family("mixer");
  m->set_hidden_dim(16);
  m->set_num_layers(3);
  auto* mx = m->mutable_mixer();
  mx->set_token_mlp_dim(16);
  mx->set_channel_mlp_dim(32);
  mx->set_num_sparse_blocks(2);
  mx->set_token_moe_top_k(1);
  mx->set_channel_moe_top_k(2);
  auto* moe = m->mutable_moe();
  moe->set_capacity_factor_train(1.0);  // tight enough that rows are dropped
  moe->set_switch_loss_weight(0);       // Sparse-MLP's losses: importance + load only
  moe->set_z_loss_weight(0);
  moe->set_importance_loss_weight(0.005f);
  moe->set_load_loss_weight(0.005f);
  return c;
}

TEST(EpInvarianceMixer, Ep4) { ExpectEpInvariance(4, nullptr, SmallSparseMlp); }
TEST(EpInvarianceMixer, Ep2Dp2) { ExpectEpInvariance(2, nullptr, SmallSparseMlp); }
TEST(EpInvarianceMixer, Ep4WithRecipe) {
  ep_invariance::ExpectEpInvarianceWithRecipe(4, SmallSparseMlp);
}
TEST(EpInvarianceMixer, Ep4ReRepresentBoth) {
  ExpectEpInvariance(
      4,
      [](proto::TrainConfig* c) { c->mutable_model()->mutable_mixer()->set_re_represent_both(true); },
      SmallSparseMlp);
}
TEST(EpInvarianceMixer, Ep4BatchPrioritizedNoReRepresent) {
  ExpectEpInvariance(
      4,
      [](proto::TrainConfig* c) {
        c->mutable_model()->mutable_mixer()->set_re_represent(false);
        c->mutable_model()->mutable_moe()->set_batch_prioritized_routing(true);
      },
      SmallSparseMlp);
}

}  // namespace
}  // namespace moe
