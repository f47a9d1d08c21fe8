// EP invariance of the conditional MoE family (DESIGN.md section 3): multi-task training on the
// MPI world (EP = ep_size, DP = world / ep_size) equals one rank on the whole global batch --
// same losses, expert loads and parameters after kSteps steps. The shared harness
// (ep_invariance_util.h) passes no per-image task or modality, so this file runs its own loop
// with the trainer's multi-task batches (launcher/multitask.h: both ids are functions of the
// sample's stream position, so the world and the single rank assign the same).
#include <cstdio>

#include "launcher/multitask.h"
#include "tests/mpi/ep_invariance_util.h"

namespace moe {
namespace {

using ep_invariance::Data;
using ep_invariance::Gather;
using ep_invariance::kBatchPerRank;
using ep_invariance::kSteps;
using ep_invariance::TensorMaxDiff;
using ep_invariance::TensorRelDiff;
using Level = proto::ConditionalConfig;

proto::TrainConfig SmallConditional(int ep_size, int batch_per_rank, Level::RoutingLevel level,
                                    bool dropless) {
  proto::TrainConfig c;
  auto* m = c.mutable_model();
  m->set_family("conditional");
  m->set_hidden_dim(16);
  m->set_mlp_dim(32);
  m->set_num_heads(2);
  m->set_num_layers(3);  // blocks 0 and 2: routed FFN and routed attention
  m->set_use_moe(true);
  auto* moe = m->mutable_moe();
  moe->set_num_experts(8);
  moe->set_top_k(2);
  moe->set_group_size_images(4);
  moe->set_dropless(dropless);
  moe->set_capacity_factor_train(1.0);  // tight: attribute routing concentrates tokens
  moe->set_switch_loss_weight(0.01f);
  m->mutable_conditional()->set_routing_level(level);
  m->mutable_conditional()->set_moe_in_attention(true);
  c.mutable_parallel()->set_ep_size(ep_size);
  c.mutable_data()->set_batch_per_rank(batch_per_rank);
  c.mutable_optimizer()->set_warmup_steps(1);
  c.mutable_optimizer()->set_learning_rate(0.003f);
  c.set_steps(kSteps);
  c.set_seed(77);
  return c;
}

void ExpectConditionalEpInvariance(int ep_size, Level::RoutingLevel level, bool dropless) {
  int world = 0, rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (world % ep_size != 0) GTEST_SKIP() << "world " << world << " vs ep_size " << ep_size;
  const int64_t gb = static_cast<int64_t>(kBatchPerRank) * world;
  const proto::TrainConfig dist_cfg = SmallConditional(ep_size, kBatchPerRank, level, dropless);
  const proto::TrainConfig ref_cfg = SmallConditional(1, static_cast<int>(gb), level, dropless);
  MultiTaskSpec spec;
  std::string err;
  ASSERT_TRUE(BuildMultiTaskSpec(dist_cfg, &spec, &err)) << err;
  MpiCommunicator mpi(MPI_COMM_WORLD, ep_size);
  SelfCommunicator self;
  TrainingSession dist(dist_cfg, &mpi, nullptr);
  TrainingSession ref(ref_cfg, &self, nullptr);
  BatchSampler sampler(Data().count, 99);
  const int rows = Data().rows, cols = Data().cols;
  Tensor images;
  std::vector<int> labels, task, modality;
  int64_t dropped_seen = 0, coarse_seen = 0, view2_seen = 0;
  for (int step = 0; step < kSteps; ++step) {
    Gather(sampler.Slice(step, gb, rank * kBatchPerRank, kBatchPerRank), &images, &labels);
    MakeMultiTaskBatch(spec, rows, cols, step * gb + rank * kBatchPerRank, &images, &labels, &task,
                       &modality);
    const StepStats d = dist.TrainStep(step, images, labels, &task, &modality);
    Gather(sampler.Slice(step, gb, 0, gb), &images, &labels);
    MakeMultiTaskBatch(spec, rows, cols, step * gb, &images, &labels, &task, &modality);
    for (size_t i = 0; i < task.size(); ++i) {
      coarse_seen += task[i];
      view2_seen += modality[i];
    }
    const StepStats r = ref.TrainStep(step, images, labels, &task, &modality);
    EXPECT_NEAR(d.loss, r.loss, 1e-5 * std::abs(r.loss)) << "step " << step;
    EXPECT_NEAR(d.accuracy, r.accuracy, 1e-12) << "step " << step;
    EXPECT_NEAR(d.aux_loss, r.aux_loss, 1e-5 * std::abs(r.aux_loss) + 1e-9) << "step " << step;
    EXPECT_NEAR(d.dropped_fraction, r.dropped_fraction, 1e-12) << "step " << step;
    ASSERT_EQ(d.tokens_per_expert, r.tokens_per_expert) << "step " << step;
    dropped_seen += d.dropped_fraction > 0;
  }
  EXPECT_GT(coarse_seen, 0);
  EXPECT_GT(view2_seen, 0);
  if (!dropless) EXPECT_GT(dropped_seen, 0) << "no step dropped a token";

  std::map<std::pair<std::string, int>, Parameter*> by_key;
  for (Parameter* p : ref.Parameters()) by_key[{p->name, p->global_expert_id}] = p;
  int experts = 0, routed_attention = 0;
  double worst_norm = 0, worst_max = 0;
  for (Parameter* p : dist.Parameters()) {
    auto it = by_key.find({p->name, p->global_expert_id});
    ASSERT_NE(it, by_key.end()) << p->name << " expert " << p->global_expert_id;
    const double n = TensorRelDiff(p->value, it->second->value);
    const double mx = TensorMaxDiff(p->value, it->second->value);
    EXPECT_LE(n, 1e-5) << p->name << " expert " << p->global_expert_id << " on rank " << rank;
    EXPECT_LE(mx, 1e-4) << p->name << " expert " << p->global_expert_id << " on rank " << rank;
    worst_norm = std::max(worst_norm, n);
    worst_max = std::max(worst_max, mx);
    experts += p->is_expert();
    routed_attention += p->name.find(".attn.moe.") != std::string::npos;
  }
  EXPECT_GT(experts, 0);
  EXPECT_GT(routed_attention, 0);
  if (rank == 0)
    printf("[ ep_size=%d %s%s ] worst parameter error after %d steps: norm-relative %.2e, "
           "max-relative %.2e\n",
           ep_size, Level::RoutingLevel_Name(level).c_str(), dropless ? " dropless" : "", kSteps,
           worst_norm, worst_max);
}

TEST(EpInvarianceConditional, Ep4Attribute) {
  ExpectConditionalEpInvariance(4, Level::ATTRIBUTE, /*dropless=*/false);
}
TEST(EpInvarianceConditional, Ep2Dp2Attribute) {
  ExpectConditionalEpInvariance(2, Level::ATTRIBUTE, /*dropless=*/false);
}
TEST(EpInvarianceConditional, Ep4AttributeDropless) {
  ExpectConditionalEpInvariance(4, Level::ATTRIBUTE, /*dropless=*/true);
}
TEST(EpInvarianceConditional, Ep4Task) {
  ExpectConditionalEpInvariance(4, Level::TASK, /*dropless=*/false);
}
TEST(EpInvarianceConditional, Ep4Context) {
  ExpectConditionalEpInvariance(4, Level::CONTEXT, /*dropless=*/false);
}
TEST(EpInvarianceConditional, Ep2Dp2Token) {
  ExpectConditionalEpInvariance(2, Level::TOKEN, /*dropless=*/false);
}

}  // namespace
}  // namespace moe
