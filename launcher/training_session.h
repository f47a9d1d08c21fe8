// TrainingSession: one rank's share of training: the net, its task head, the optimizer, and the
// step that ties forward, loss, backward, gradient synchronisation and the AdamW update together.
//
// Family-blind: CreateNet and CreateTaskHead (models/nets/net_factory.h) give the net and what
// its logits are scored against (models/nets/task_head.h). A batch's per-image side information
// (ImageSideInfo, models/nets/net.h) is made by the head, carried here unread to the net
// (SetBatchInfo) and back to the head's loss; single- and multi-task families take the same
// path. The step loop around TrainStep is launcher/train_loop.h.
//
// Loss scaling: each rank seeds its backward with 1/global_batch (not 1/local_batch) and the
// gradients are SUMMED over ranks, so every rank ends with the gradient of the global mean loss,
// exactly what one rank computes on the whole global batch (the EP-invariance invariant).
// Dense grads are summed over the world; expert grads over the DP replicas of those experts (the
// contributions of the other EP ranks' tokens already arrived through the all-to-all).
//
// Devices (config.device): the net, its gradients and the AdamW moments live on one device, and
// every device operation of a step (gradient bucket, norms, clipping, AdamW) goes through
// BackendFor(device) (core/backend.h). "cpu" is the host path throughout. "cuda" (builds with
// the CUDA path) moves the net to this rank's GPU and gives it the DEVICE communicator (an
// NcclCommunicator), which also carries the gradient all-reduces; the host communicator keeps the
// host scalars (metrics, eval sums, contexts). Per step the images are uploaded, the loss runs on
// the device (the task head's: softmax cross-entropy through the backend, or the small [B, C]
// logits scored on the host and their gradient uploaded), dense grads are flattened into one device
// bucket and all-reduced over the world, expert grads over DP; grad norms are per-parameter
// cublasSnrm2 (float) squared and summed in double on the host (one small D2H copy per step; the
// CPU path sums squares in double, so the norm can differ in the last float bits); clipping is
// cublasSscal; AdamW is AdamWStepCuda. Device work is on the legacy default stream; the NCCL
// stream must be a blocking stream (cudaStreamCreate), so the two are ordered implicitly.
#pragma once

#include <memory>
#include <vector>

#include "comm/communicator.h"
#include "core/optim/adamw.h"
#include "core/profiler.h"
#include "models/nets/net.h"
#include "models/nets/task_head.h"
#include "proto/moe_ep.pb.h"

namespace moe {

struct StepStats {
  double loss = 0;          // mean cross-entropy over the global batch
  double aux_loss = 0;      // weighted auxiliary losses, summed over MoE layers
  double accuracy = 0;      // on the global batch
  double dropped_fraction = 0;  // dropped / (tokens * k), over all MoE layers and ranks
  double capacity_use = 0;      // filled / offered slots (0 when dropless or dense)
  double grad_norm = 0;
  double learning_rate = 0;
  // Per MoE layer, over the world: kept assignments per expert, dropped fraction, capacity use.
  std::vector<std::vector<int64_t>> tokens_per_expert;
  std::vector<double> layer_dropped_fraction, layer_capacity_use;
  // Super-class-guided routers (Mobile V-MoE): images whose router argmax is their super-class,
  // over the guided MoE layers and the global batch; -1 when no layer is guided.
  double superclass_accuracy = -1;
};

class TrainingSession {
 public:
  // comm: host-memory communicator (MPI). device_comm: required when config.device() is "cuda"
  // (works_on_device(), same group layout as comm), ignored otherwise. Neither is owned.
  TrainingSession(const proto::TrainConfig& config, Communicator* comm, Profiler* profiler,
                  Communicator* device_comm = nullptr);
  ~TrainingSession();

  // images (host): this rank's [batch_per_rank, 784] slice of the global batch at `step`, as the
  // task head made it (TaskHead::MakeTrainingBatch): labels are logit columns, `side` the
  // per-image side information (empty for single-task families).
  StepStats TrainStep(int64_t step, const Tensor& images, const std::vector<int>& labels,
                      const ImageSideInfo& side = ImageSideInfo());
  // TrainStep's two halves, for callers that inspect the gradients before the update (the
  // EP-invariance tests): forward, backward, gradient synchronisation, clipping and the global
  // statistics; then the learning rate and the optimizer step (fills s->learning_rate).
  StepStats ComputeGradients(int64_t step, const Tensor& images, const std::vector<int>& labels,
                             const ImageSideInfo& side = ImageSideInfo());
  void ApplyUpdate(int64_t step, StepStats* s);
  // Forward only (eval capacity, no noise). The first `valid` rows count; the rest pad the batch
  // so every rank runs the same number of MoE all-to-alls. Returns this rank's sums, scored by
  // the task head (TaskHead::Score) on a batch made by TaskHead::MakeEvalBatch.
  void Evaluate(const Tensor& images, const std::vector<int>& labels, int64_t valid,
                int64_t* correct, double* loss_sum, const ImageSideInfo& side = ImageSideInfo());

  std::vector<Parameter*> Parameters() { return params_; }

  // Checkpointing (launcher/checkpoint.h): host copies of a parameter's value and AdamW moments
  // (zeros for a parameter never stepped), and the number of optimizer steps taken; the setters
  // restore them (host buffers of p->value.numel() floats), on either device.
  void GetTrainingState(const Parameter* p, std::vector<float>* value, std::vector<float>* adam_m,
                        std::vector<float>* adam_v) const;
  void SetTrainingState(Parameter* p, const float* value, const float* adam_m, const float* adam_v);
  int64_t optimizer_step_count() const;
  void set_optimizer_step_count(int64_t steps);
  Net& net() { return *net_; }
  const TaskHead& task_head() const { return *task_head_; }
  bool on_device() const { return on_device_; }
  int64_t global_batch() const { return global_batch_; }

 private:
  void SetContext(bool training, int64_t step, int64_t rows);
  // The stochastic-depth masks' key and this rank's first global image (models/layers/drop_path.h).
  void SetDropPathContext(bool training, int64_t step, int64_t rows);
  // This rank's loss sum and correct count, plus every MoE layer's metrics, summed over the
  // world in one all-reduce.
  StepStats ReduceStepStatistics(double loss_sum, int num_correct);
  // The device work of a step, through BackendFor(device_) (core/backend.h).
  void SynchroniseGradients();
  double ClipGradients();
  void OptimizerStep(float lr);
  Tensor ToNetDevice(const Tensor& host) const;
  size_t IndexOf(const Parameter* p) const;

  proto::TrainConfig config_;
  Communicator* comm_;
  Profiler* profiler_;
  std::unique_ptr<Net> net_;
  std::vector<Parameter*> params_, dense_, expert_;
  std::unique_ptr<TaskHead> task_head_;  // the loss, and how batches are made
  int64_t global_batch_;
  bool on_device_ = false;
  Device device_ = Device::kCPU;         // where the net, its gradients and the moments live
  Communicator* device_comm_ = nullptr;  // CUDA only
  Communicator* grad_comm_ = nullptr;    // the gradient all-reduces: device_comm_ or comm_
  Tensor grad_bucket_;                   // [sum of dense grad sizes]: one all-reduce
  std::vector<Tensor> adam_m_, adam_v_;  // AdamW moments per params_ entry
  int64_t adam_step_ = 0;
};

}  // namespace moe
