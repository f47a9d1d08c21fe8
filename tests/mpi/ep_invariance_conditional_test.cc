// EP invariance of the conditional MoE family (README.md, "Invariants the tests hold the code
// to"): multi-task training on the MPI world (EP = ep_size, DP = world / ep_size) equals one rank
// on the whole global batch --
// same losses, expert loads and gradients at every step (the shared harness,
// ep_invariance_util.h, fed with the trainer's multi-task batches).
#include <cstdio>

#include "models/nets/multitask.h"
#include "tests/mpi/ep_invariance_util.h"

namespace moe {
namespace {

using ep_invariance::Data;
using ep_invariance::Gather;
using ep_invariance::kBatchPerRank;
using Level = proto::ConditionalConfig;

proto::TrainConfig SmallConditional(int ep_size, int batch_per_rank, Level::RoutingLevel level,
                                    bool dropless, Level::FfnForm form) {
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
  // The routed pair has no auxiliary losses (nor capacity: the two settings above go unread).
  if (form == Level::MOE_LAYER) moe->set_switch_loss_weight(0.01f);
  m->mutable_conditional()->set_ffn_form(form);
  m->mutable_conditional()->set_routing_level(level);
  m->mutable_conditional()->set_moe_in_attention(true);
  c.mutable_parallel()->set_ep_size(ep_size);
  c.mutable_data()->set_batch_per_rank(batch_per_rank);
  c.mutable_optimizer()->set_warmup_steps(1);
  c.mutable_optimizer()->set_learning_rate(0.003f);
  c.set_steps(ep_invariance::kSteps);
  c.set_seed(77);
  return c;
}

// The trainer's multi-task batches (models/nets/multitask.h): task and modality are functions of
// the sample's stream position, so the world and the single rank assign the same. Counts how many
// coarse-task and second-view images the reference saw, so the test knows both were exercised.
ep_invariance::BatchFn MultiTaskBatches(const MultiTaskSpec& spec, int64_t global_batch,
                                        int64_t* coarse_seen, int64_t* view2_seen) {
  return [spec, global_batch, coarse_seen, view2_seen,
          sampler = BatchSampler(Data().count, 99)](int64_t step, int64_t first, int64_t count,
                                                    ep_invariance::Batch* out) mutable {
    Gather(sampler.Slice(step, global_batch, first, count), &out->images, &out->labels);
    MakeMultiTaskBatch(spec, Data().rows, Data().cols, step * global_batch + first, &out->images,
                       &out->labels, &out->side.task, &out->side.modality);
    if (count != global_batch) return;
    for (size_t i = 0; i < out->side.task.size(); ++i) {
      *coarse_seen += out->side.task[i];
      *view2_seen += out->side.modality[i];
    }
  };
}

void ExpectConditionalEpInvariance(int ep_size, Level::RoutingLevel level, bool dropless,
                                   Level::FfnForm form = Level::MOE_LAYER) {
  int world = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  if (world % ep_size != 0) GTEST_SKIP() << "world " << world << " vs ep_size " << ep_size;
  const int64_t gb = static_cast<int64_t>(kBatchPerRank) * world;
  const proto::TrainConfig dist_cfg =
      SmallConditional(ep_size, kBatchPerRank, level, dropless, form);
  const proto::TrainConfig ref_cfg =
      SmallConditional(1, static_cast<int>(gb), level, dropless, form);
  MultiTaskSpec spec;
  std::string err;
  ASSERT_TRUE(BuildMultiTaskSpec(dist_cfg, &spec, &err)) << err;
  int64_t coarse_seen = 0, view2_seen = 0;
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank == 0)
    printf("[ %s%s %s ]\n", Level::RoutingLevel_Name(level).c_str(), dropless ? " dropless" : "",
           Level::FfnForm_Name(form).c_str());
  // The routed pair never drops (every row takes its k experts on its own rank).
  ep_invariance::RunEpInvariance(ep_size, dist_cfg, ref_cfg,
                                 MultiTaskBatches(spec, gb, &coarse_seen, &view2_seen),
                                 /*expect_drops=*/form == Level::MOE_LAYER,
                                 /*expect_experts=*/form == Level::MOE_LAYER);
  EXPECT_GT(coarse_seen, 0);
  EXPECT_GT(view2_seen, 0);
  // The routed attention's experts are replicated: their names must be among the compared ones.
  SelfCommunicator self;
  TrainingSession probe(ref_cfg, &self, nullptr);
  int routed_attention = 0, routed_ffn = 0;
  for (Parameter* p : probe.Parameters()) {
    routed_attention += p->name.find(".attn.moe.") != std::string::npos;
    routed_ffn += p->name.find(".ffn.moe.") != std::string::npos;
  }
  EXPECT_GT(routed_attention, 0);
  EXPECT_EQ(routed_ffn > 0, form == Level::ROUTED_PAIR);
}

// The default FFN form (ROUTED_PAIR): replicated routed fc1/fc2, noise per global image.
TEST(EpInvarianceConditional, Ep4AttributeRoutedPair) {
  ExpectConditionalEpInvariance(4, Level::ATTRIBUTE, false, Level::ROUTED_PAIR);
}
TEST(EpInvarianceConditional, Ep2Dp2AttributeRoutedPair) {
  ExpectConditionalEpInvariance(2, Level::ATTRIBUTE, false, Level::ROUTED_PAIR);
}
TEST(EpInvarianceConditional, Ep4TokenRoutedPair) {
  ExpectConditionalEpInvariance(4, Level::TOKEN, false, Level::ROUTED_PAIR);
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
