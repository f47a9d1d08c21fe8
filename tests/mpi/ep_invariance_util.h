// EP invariance (DESIGN.md section 3), reusable by every family's test: training on the MPI
// world (EP = ep_size, DP = world / ep_size) equals training on 1 rank that processes the same
// routing groups -- same losses, same parameters after kSteps steps, to float32 rounding. Each
// rank runs the distributed job, then replays the whole global batch alone (SelfCommunicator)
// and compares what it holds: every dense parameter and its own experts.
#pragma once

#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <map>

#include "comm/mpi_communicator.h"
#include "comm/self_communicator.h"
#include "launcher/batch_sampler.h"
#include "launcher/idx_dataset.h"
#include "launcher/training_session.h"

namespace moe {
namespace ep_invariance {

constexpr int kSteps = 5;
constexpr int kBatchPerRank = 8;

inline const ImageDataset& Data() {
  static ImageDataset d = [] {
    ImageDataset out;
    std::string err;
    // MOE_EP_DATA_DIR lets a relocated bundle (tests/gpu/make_bundle.sh) point at its copy.
    const char* env = std::getenv("MOE_EP_DATA_DIR");
    const std::string dir = std::string(env ? env : "/usr/share/datasets/fashion-mnist") + "/";
    EXPECT_TRUE(LoadIdxDataset(dir + "t10k-images-idx3-ubyte.gz", dir + "t10k-labels-idx1-ubyte.gz",
                               &out, &err))
        << err;
    return out;
  }();
  return d;
}

inline proto::TrainConfig SmallVmoe(int ep_size, int batch_per_rank) {
  proto::TrainConfig c;
  auto* m = c.mutable_model();
  m->set_hidden_dim(16);
  m->set_mlp_dim(32);
  m->set_num_heads(2);
  m->set_num_layers(2);  // block 1 is MoE
  m->set_use_moe(true);
  auto* moe = m->mutable_moe();
  moe->set_num_experts(8);
  moe->set_top_k(2);
  moe->set_group_size_images(4);
  moe->set_capacity_factor_train(1.0);  // tight enough that tokens are dropped
  moe->set_switch_loss_weight(0.01f);
  moe->set_z_loss_weight(0.001f);
  c.mutable_parallel()->set_ep_size(ep_size);
  c.mutable_data()->set_batch_per_rank(batch_per_rank);
  c.mutable_optimizer()->set_warmup_steps(1);
  c.mutable_optimizer()->set_learning_rate(0.003f);
  c.set_steps(kSteps);
  c.set_seed(99);
  return c;
}

inline void Gather(const std::vector<int64_t>& idx, Tensor* images, std::vector<int>* labels) {
  const ImageDataset& d = Data();
  const int64_t px = d.rows * d.cols;
  *images = Tensor({static_cast<int64_t>(idx.size()), px});
  labels->resize(idx.size());
  for (size_t i = 0; i < idx.size(); ++i) {
    std::copy(d.pixels.begin() + idx[i] * px, d.pixels.begin() + (idx[i] + 1) * px,
              images->data() + i * px);
    (*labels)[i] = d.labels[idx[i]];
  }
}

// ||a - b|| / ||b|| (Frobenius): the tensor's relative error.
inline double TensorRelDiff(const Tensor& a, const Tensor& b) {
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double d = static_cast<double>(a.at(i)) - b.at(i);
    diff += d * d;
    scale += static_cast<double>(b.at(i)) * b.at(i);
  }
  return scale > 0 ? std::sqrt(diff / scale) : std::sqrt(diff);
}

// Largest |a - b| relative to the tensor's largest |b|: catches a few elements gone wrong,
// which the norm could average away.
inline double TensorMaxDiff(const Tensor& a, const Tensor& b) {
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    diff = std::max(diff, static_cast<double>(std::abs(a.at(i) - b.at(i))));
    scale = std::max(scale, static_cast<double>(std::abs(b.at(i))));
  }
  return scale > 0 ? diff / scale : diff;
}

// base(ep_size, batch_per_rank) builds the config (SmallVmoe by default); tweak edits it.
// expect_drops: the routing rule can drop tokens at this capacity (token-side rules), so at
// least one step must have dropped some.
inline void ExpectEpInvariance(
    int ep_size, void (*tweak)(proto::TrainConfig*),
    std::function<proto::TrainConfig(int, int)> base = nullptr, bool expect_drops = true) {
  int world = 0, rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (world % ep_size != 0) GTEST_SKIP() << "world " << world << " vs ep_size " << ep_size;
  const int64_t global_batch = static_cast<int64_t>(kBatchPerRank) * world;

  if (!base) base = SmallVmoe;
  proto::TrainConfig dist_cfg = base(ep_size, kBatchPerRank);
  proto::TrainConfig ref_cfg = base(1, kBatchPerRank * world);
  if (tweak) {
    tweak(&dist_cfg);
    tweak(&ref_cfg);
  }
  MpiCommunicator mpi(MPI_COMM_WORLD, ep_size);
  SelfCommunicator self;
  TrainingSession dist(dist_cfg, &mpi, nullptr);
  TrainingSession ref(ref_cfg, &self, nullptr);
  BatchSampler sampler(Data().count, 99);
  Tensor images;
  std::vector<int> labels;
  int64_t dropped_seen = 0;
  for (int step = 0; step < kSteps; ++step) {
    Gather(sampler.Slice(step, global_batch, rank * kBatchPerRank, kBatchPerRank), &images, &labels);
    const StepStats d = dist.TrainStep(step, images, labels);
    Gather(sampler.Slice(step, global_batch, 0, global_batch), &images, &labels);
    const StepStats r = ref.TrainStep(step, images, labels);
    EXPECT_NEAR(d.loss, r.loss, 1e-5 * std::abs(r.loss)) << "step " << step;
    EXPECT_NEAR(d.aux_loss, r.aux_loss, 1e-5 * std::abs(r.aux_loss) + 1e-9) << "step " << step;
    EXPECT_NEAR(d.dropped_fraction, r.dropped_fraction, 1e-12) << "step " << step;
    ASSERT_EQ(d.tokens_per_expert, r.tokens_per_expert) << "step " << step;
    dropped_seen += d.dropped_fraction > 0;
  }
  if (expect_drops && !dist_cfg.model().moe().dropless())
    EXPECT_GT(dropped_seen, 0) << "no step dropped a token";

  std::map<std::pair<std::string, int>, Parameter*> by_key;
  for (Parameter* p : ref.Parameters()) by_key[{p->name, p->global_expert_id}] = p;
  int compared = 0, experts = 0;
  double worst_norm = 0, worst_max = 0;
  for (Parameter* p : dist.Parameters()) {
    auto it = by_key.find({p->name, p->global_expert_id});
    ASSERT_NE(it, by_key.end()) << p->name << " expert " << p->global_expert_id;
    EXPECT_LE(TensorRelDiff(p->value, it->second->value), 1e-5)
        << p->name << " expert " << p->global_expert_id << " on rank " << rank;
    // Elementwise the bound is looser: where a gradient is a sum that nearly cancels, AdamW
    // normalises the rounding difference of that sum into an update of relative size ~1e-4.
    EXPECT_LE(TensorMaxDiff(p->value, it->second->value), 1e-4)
        << p->name << " expert " << p->global_expert_id << " on rank " << rank;
    worst_norm = std::max(worst_norm, TensorRelDiff(p->value, it->second->value));
    worst_max = std::max(worst_max, TensorMaxDiff(p->value, it->second->value));
    ++compared;
    experts += p->is_expert();
  }
  EXPECT_GT(experts, 0) << "no expert parameter compared";
  if (rank == 0)
    printf("[ ep_size=%d ] worst parameter error after %d steps: norm-relative %.2e, max-relative %.2e\n",
           ep_size, kSteps, worst_norm, worst_max);
  EXPECT_GT(compared, experts);
}

}  // namespace ep_invariance
}  // namespace moe
