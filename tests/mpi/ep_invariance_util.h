// EP invariance (README.md, "Invariants the tests hold the code to"), reusable by every
// family's test: a training step on the MPI world (EP = ep_size, DP = world / ep_size) computes
// what 1 rank computes on the same global batch (the same routing groups): the same loss,
// routing, drops and gradients. Each rank runs
// the distributed job and, beside it, replays the whole global batch alone (SelfCommunicator),
// then compares what it holds: every dense parameter and its own experts.
//
// How the comparison is made, and why (the tolerances below follow from it):
//  - Teacher forcing. Before every step the distributed run takes the reference's parameters,
//    so each step is compared from identical weights. Comparing weights after several free
//    steps is NOT robust: the two runs add the same terms in different orders (a rank sums its
//    8 images, then the all-reduce sums the ranks; the reference sums all 32 at once, and
//    OpenBLAS's blocking, which depends on the CPU's kernel, e.g. Haswell vs SkylakeX vs
//    Sandybridge, decides the order inside one GEMM). Those last-bit differences are then
//    amplified by AdamW, whose update lr * m / sqrt(v) is ~lr * sign(g) for every element: where
//    a gradient element nearly cancels (position embeddings, routers), rounding flips its sign
//    and the weights part by 2 lr. Five free steps measured 1e-4 to 1e-3 apart on some kernels,
//    on correct code. AdamW is also blind to gradient scale, so weights after AdamW would hide a
//    missing 1/P factor; the gradients do not.
//  - Gradients, per tensor, norm-relative: ||g_dist - g_ref|| / ||g_ref|| <= kGradTolerance.
//    Each gradient element is a sum of at most n products (n = rows of the global batch that
//    reach it; n <= 32 images x 17 tokens x k = 1088 here) summed in two different orders. Each
//    order is within n * u * sum|terms| of the exact sum (u = 2^-24, Higham's bound), so the two
//    differ by at most 2 n u = 1.3e-4 times sum|terms|; rounding errors add like a random walk,
//    so sqrt(n) u ~ 2e-6 is typical, and that is what every OpenBLAS kernel measured (worst
//    1.1e-6 over Prescott, Nehalem, Sandybridge, Haswell, Zen, SkylakeX and Cooperlake, every
//    family). kGradTolerance = 1e-4 sits between: it is about 2 n u, i.e. it admits the
//    worst-case reordering of every sum with no cancellation, and it is ~100x above anything
//    measured. The bugs it must catch are orders of magnitude larger: one dropped row in an
//    all-to-all moves an expert's gradient by ~1 / (rows per expert) ~ 1e-2 (measured 0.11 and
//    up, one row lost per exchange), a missing 1/P by 0.5-3, a missing DP all-reduce of expert
//    gradients by 1.3-2.2, a wrong expert-to-rank map by 2.4-7.4.
//  - Loss and aux loss: relative kLossTolerance = 1e-5. From identical weights only the forward
//    GEMMs' blocking differs (a few u per layer); a dropped row changes the loss by ~1e-4 and
//    more.
//  - Routing: tokens per expert and the dropped fraction must match exactly. With identical
//    weights the router logits differ by a few u at most, so a decision could flip only on a
//    near-exact tie. pMoE's duplicate background patches tie exactly, and their embeddings can
//    differ in the last bit between the layouts; with OpenBLAS's router GEMM every kernel set
//    tried resolves them alike, a router GEMM with other rounding did not (its per-position-head
//    cases then failed at 1e-2; tests/bench/RESULTS.md, "Router against the experts").
//  - Replicas: after the last step every DP replica of an expert, and every rank's copy of a
//    dense parameter, must hold bit-identical values (same gradients after the all-reduce, same
//    optimizer arithmetic). This is exact on any kernel and checks the distributed optimizer
//    path that teacher forcing bypasses.
#pragma once

#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "comm/mpi_communicator.h"
#include "comm/self_communicator.h"
#include "launcher/augmentation.h"
#include "launcher/batch_sampler.h"
#include "launcher/idx_dataset.h"
#include "launcher/test_set_eval.h"
#include "launcher/training_session.h"

namespace moe {
namespace ep_invariance {

constexpr int kSteps = 5;
constexpr int kBatchPerRank = 8;
constexpr double kGradTolerance = 1e-4;  // derived in the header comment
constexpr double kLossTolerance = 1e-5;

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

// The trainer's own batch gathering, on the test set.
inline void Gather(const std::vector<int64_t>& idx, Tensor* images, std::vector<int>* labels) {
  GatherBatch(Data(), idx, images, labels);
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

// One step's batch for one rank (or for the reference): images and labels, and for multi-task
// families each image's task and modality (the side information the task head makes).
struct Batch {
  Tensor images;
  std::vector<int> labels;
  ImageSideInfo side;
};
// Fills `out` with the global batch's images [first, first + count) at `step`.
using BatchFn = std::function<void(int64_t step, int64_t first, int64_t count, Batch* out)>;

inline BatchFn SingleTaskBatches() {
  int world = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  const int64_t global_batch = static_cast<int64_t>(kBatchPerRank) * world;
  return [global_batch, sampler = BatchSampler(Data().count, 99)](
             int64_t step, int64_t first, int64_t count, Batch* out) mutable {
    Gather(sampler.Slice(step, global_batch, first, count), &out->images, &out->labels);
  };
}

// SingleTaskBatches augmented as the training loop does (launcher/train_loop.cc): row i of a
// slice is image first + i of the step's global batch.
inline BatchFn AugmentedBatches(const AugmentOptions& options, uint64_t seed) {
  return [plain = SingleTaskBatches(), options, seed](int64_t step, int64_t first, int64_t count,
                                                      Batch* out) mutable {
    plain(step, first, count, out);
    AugmentBatch(options, seed, step, first, &out->images);
  };
}

inline StepStats StepOf(TrainingSession* s, int64_t step, Batch* b) {
  return s->ComputeGradients(step, b->images, b->labels, b->side);
}

using ParamKey = std::pair<std::string, int>;
inline std::map<ParamKey, Parameter*> ByKey(TrainingSession* s) {
  std::map<ParamKey, Parameter*> m;
  for (Parameter* p : s->Parameters()) m[{p->name, p->global_expert_id}] = p;
  return m;
}

// What one invariance run saw, for the summary line and the coverage checks.
struct RunSummary {
  double worst_grad = 0, worst_loss = 0;
  int64_t steps_with_drops = 0, experts_compared = 0, tensors_compared = 0;
};

// Compares one step's gradients tensor by tensor; returns the worst norm-relative error.
inline double ExpectSameGradients(TrainingSession* dist, TrainingSession* ref, int64_t step,
                                  RunSummary* sum) {
  const auto ref_params = ByKey(ref);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  double worst = 0;
  for (Parameter* p : dist->Parameters()) {
    auto it = ref_params.find({p->name, p->global_expert_id});
    EXPECT_NE(it, ref_params.end()) << p->name << " expert " << p->global_expert_id;
    if (it == ref_params.end()) continue;
    const double e = TensorRelDiff(p->grad, it->second->grad);
    EXPECT_LE(e, kGradTolerance) << "gradient of " << p->name << " expert "
                                 << p->global_expert_id << " at step " << step << " on rank " << rank;
    worst = std::max(worst, e);
    ++sum->tensors_compared;
    sum->experts_compared += p->is_expert();
  }
  return worst;
}

// Every rank holding a copy of a parameter (DP replicas of an expert; the whole world for a dense
// one) must hold the same bits: max == min over the copies, element by element.
inline void ExpectReplicasIdentical(TrainingSession* dist, MpiCommunicator* mpi) {
  for (Parameter* p : dist->Parameters()) {
    const GroupKind g = p->is_expert() ? GroupKind::kData : GroupKind::kWorld;
    std::vector<double> mx(p->value.data(), p->value.data() + p->value.numel()), mn = mx;
    mpi->AllReduceMax(mx.data(), static_cast<int64_t>(mx.size()), g);
    mpi->AllReduceMin(mn.data(), static_cast<int64_t>(mn.size()), g);
    EXPECT_TRUE(mx == mn) << p->name << " expert " << p->global_expert_id
                          << ": replicas differ after the last step";
  }
}

// The harness. dist_cfg/ref_cfg: the same model at ep_size and on 1 rank with the whole global
// batch. expect_drops: the rule can drop tokens at this capacity, so some step must have.
// expect_experts: the model has sharded expert parameters (a net whose routed experts are all
// replicated, the conditional family's routed pairs, has none).
inline RunSummary RunEpInvariance(int ep_size, const proto::TrainConfig& dist_cfg,
                                  const proto::TrainConfig& ref_cfg, const BatchFn& batches,
                                  bool expect_drops, bool expect_experts = true) {
  int world = 0, rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const int64_t global_batch = static_cast<int64_t>(kBatchPerRank) * world;
  MpiCommunicator mpi(MPI_COMM_WORLD, ep_size);
  SelfCommunicator self;
  TrainingSession dist(dist_cfg, &mpi, nullptr);
  TrainingSession ref(ref_cfg, &self, nullptr);
  const auto dist_params = ByKey(&dist);
  RunSummary sum;
  Batch local, whole;
  for (int step = 0; step < kSteps; ++step) {
    for (Parameter* p : ref.Parameters()) {  // teacher forcing: start from the same weights
      auto it = dist_params.find({p->name, p->global_expert_id});
      if (it != dist_params.end()) it->second->value.CopyFrom(p->value);
    }
    batches(step, static_cast<int64_t>(rank) * kBatchPerRank, kBatchPerRank, &local);
    batches(step, 0, global_batch, &whole);
    StepStats d = StepOf(&dist, step, &local);
    StepStats r = StepOf(&ref, step, &whole);
    EXPECT_NEAR(d.loss, r.loss, kLossTolerance * std::abs(r.loss)) << "step " << step;
    EXPECT_NEAR(d.aux_loss, r.aux_loss, kLossTolerance * std::abs(r.aux_loss) + 1e-9)
        << "step " << step;
    EXPECT_EQ(d.accuracy, r.accuracy) << "step " << step;
    EXPECT_EQ(d.dropped_fraction, r.dropped_fraction) << "step " << step;
    EXPECT_EQ(d.tokens_per_expert, r.tokens_per_expert) << "step " << step;
    sum.worst_loss = std::max(sum.worst_loss, std::abs(d.loss - r.loss) / std::abs(r.loss));
    sum.worst_grad = std::max(sum.worst_grad, ExpectSameGradients(&dist, &ref, step, &sum));
    sum.steps_with_drops += d.dropped_fraction > 0;
    dist.ApplyUpdate(step, &d);
    ref.ApplyUpdate(step, &r);
  }
  ExpectReplicasIdentical(&dist, &mpi);
  if (expect_drops && !dist_cfg.model().moe().dropless())
    EXPECT_GT(sum.steps_with_drops, 0) << "no step dropped a token";
  if (expect_experts) EXPECT_GT(sum.experts_compared, 0) << "no expert parameter compared";
  EXPECT_GT(sum.tensors_compared, sum.experts_compared) << "no dense parameter compared";
  if (rank == 0)
    printf("[ ep_size=%d ] worst over %d teacher-forced steps: gradient norm-relative %.2e "
           "(tolerance %.0e), loss relative %.2e\n",
           ep_size, kSteps, sum.worst_grad, kGradTolerance, sum.worst_loss);
  return sum;
}

// base(ep_size, batch_per_rank) builds the config (SmallVmoe by default); tweak edits it.
inline void ExpectEpInvariance(int ep_size, void (*tweak)(proto::TrainConfig*),
                               std::function<proto::TrainConfig(int, int)> base = nullptr,
                               bool expect_drops = true) {
  int world = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  if (world % ep_size != 0) GTEST_SKIP() << "world " << world << " vs ep_size " << ep_size;
  if (!base) base = SmallVmoe;
  proto::TrainConfig dist_cfg = base(ep_size, kBatchPerRank);
  proto::TrainConfig ref_cfg = base(1, kBatchPerRank * world);
  if (tweak) {
    tweak(&dist_cfg);
    tweak(&ref_cfg);
  }
  RunEpInvariance(ep_size, dist_cfg, ref_cfg, SingleTaskBatches(), expect_drops);
}

// The training recipe on (random crop and flip, label smoothing, stochastic depth at rate 0.5 in
// the last block) over base(ep_size, batch_per_rank): the masks and draws key on global image
// indices, so the layouts must still agree.
inline void ExpectEpInvarianceWithRecipe(int ep_size,
                                         std::function<proto::TrainConfig(int, int)> base) {
  int world = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  if (world % ep_size != 0) GTEST_SKIP() << "world " << world << " vs ep_size " << ep_size;
  auto recipe = [](proto::TrainConfig c) {
    c.mutable_model()->set_drop_path_rate(0.5f);
    c.mutable_recipe()->set_crop_padding(3);
    c.mutable_recipe()->set_horizontal_flip(true);
    c.mutable_recipe()->set_label_smoothing(0.1f);
    return c;
  };
  const proto::TrainConfig dist_cfg = recipe(base(ep_size, kBatchPerRank));
  const proto::TrainConfig ref_cfg = recipe(base(1, kBatchPerRank * world));
  AugmentOptions augment = AugmentOptionsFromConfig(dist_cfg);
  ASSERT_TRUE(augment.any());
  RunEpInvariance(ep_size, dist_cfg, ref_cfg, AugmentedBatches(augment, dist_cfg.seed()),
                  /*expect_drops=*/true);
}

}  // namespace ep_invariance
}  // namespace moe
