// EP invariance of Mobile V-MoE (per-image routing in the last 2 blocks, super-class guidance):
// P ranks train exactly as 1 rank on the same routing groups. The super-class labels come from
// the class labels through Net::SetBatchInfo, which TrainingSession calls before every training
// Forward, so each rank guides its router with its own images' super-classes; the guidance loss
// is scaled by 1/global batch, so the ranks' sum equals the single rank's value. By default the
// net's ONE shared router (a dense parameter, noise keyed on global groups) decides for both MoE
// layers; Ep4PerLayerRouters keeps the per-layer form.
#include <fstream>

#include "models/nets/mobile_vmoe.h"
#include "tests/mpi/ep_invariance_util.h"

namespace moe {
namespace {

using ep_invariance::ExpectEpInvariance;

// One file per rank: the ranks write at the same time.
std::string SuperclassFile() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const std::string path =
      ::testing::TempDir() + "/ep_mobile_superclasses.rank" + std::to_string(rank) + ".txt";
  std::ofstream(path) << "0 0\n1 1\n2 0\n3 1\n4 0\n5 2\n6 0\n7 2\n8 3\n9 3\n";
  return path;
}

// 3 blocks (the last 2 per-image MoE), 4 experts, k = 1, groups of 4 images with room for one
// image per expert (C = ceil(4 * 1 / 4) = 1): images are dropped, so the capacity path counts.
proto::TrainConfig SmallMobile(int ep_size, int batch_per_rank) {
  proto::TrainConfig c;
  auto* m = c.mutable_model();
  m->set_family("mobile_vmoe");
  m->set_hidden_dim(16);
  m->set_mlp_dim(32);
  m->set_num_heads(2);
  m->set_num_layers(3);
  m->set_use_moe(true);
  auto* moe = m->mutable_moe();
  moe->set_num_experts(4);
  moe->set_top_k(1);
  moe->set_routing(proto::MoeConfig::PER_IMAGE);
  moe->set_placement(proto::MoeConfig::LAST_BLOCKS);
  moe->set_last_n(2);
  moe->set_group_size_images(4);
  moe->set_capacity_factor_train(1.0);
  moe->set_superclass_loss_weight(1.0f);  // heavier than the paper's 0.3: make it count
  moe->set_superclass_file(SuperclassFile());
  moe->set_importance_loss_weight(0.f);  // the paper's loss: classes + guidance only
  moe->set_load_loss_weight(0.f);
  c.mutable_parallel()->set_ep_size(ep_size);
  c.mutable_data()->set_batch_per_rank(batch_per_rank);
  c.mutable_optimizer()->set_warmup_steps(1);
  c.mutable_optimizer()->set_learning_rate(0.003f);
  c.set_steps(ep_invariance::kSteps);
  c.set_seed(99);
  return c;
}

TEST(EpInvarianceMobile, Ep4) { ExpectEpInvariance(4, nullptr, SmallMobile); }
TEST(EpInvarianceMobile, Ep2Dp2) { ExpectEpInvariance(2, nullptr, SmallMobile); }
// The shipped config's mode: exact per-expert counts, unequal super-class loads, no drops.
TEST(EpInvarianceMobile, Ep4Dropless) {
  ExpectEpInvariance(
      4, [](proto::TrainConfig* c) { c->mutable_model()->mutable_moe()->set_dropless(true); },
      SmallMobile);
}
// One router per MoE layer, each with its own guidance term and V-MoE's balance losses.
TEST(EpInvarianceMobile, Ep4PerLayerRouters) {
  ExpectEpInvariance(
      4,
      [](proto::TrainConfig* c) {
        auto* moe = c->mutable_model()->mutable_moe();
        moe->set_shared_router(false);
        moe->set_importance_loss_weight(0.005f);
        moe->set_load_loss_weight(0.005f);
      },
      SmallMobile);
}
TEST(EpInvarianceMobile, Ep4TopTwo) {
  ExpectEpInvariance(
      4, [](proto::TrainConfig* c) { c->mutable_model()->mutable_moe()->set_top_k(2); },
      SmallMobile);
}

}  // namespace
}  // namespace moe
