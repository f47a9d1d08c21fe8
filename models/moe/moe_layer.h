// MoeLayer: the expert-parallel MoE MLP (V-MoE style), forward and backward.
//
// Forward on rank r, for the G routing groups of its micro-batch (group = group_tokens rows):
//   router     logits = x W_r (+ N(0, sigma^2) noise in training), probs = softmax, top-k
//   assign     capacity slots per (group, expert), 1st choices before 2nd, BPR optional
//   pack       send buffer ordered (expert, group, slot): expert-major means destination-major
//   a2a out    over the EP group; rank p receives [src][local expert][group][slots]
//   experts    rearranged expert-major, one GEMM per expert weight over all received rows
//   a2a back   the inverse exchange
//   combine    y_t = sum over kept choices of gate * expert output (gates not renormalised)
// Backward runs the same path in reverse (two more all-to-alls).
//
// Dropless mode replaces the fixed capacity by exact per-(group, expert) counts, exchanged with
// an integer all-to-all before the data all-to-all-v; the rest of the path is identical.
//
// Device: the path is chosen by the input's device. After MoveTo(Device::kCUDA), Forward and
// Backward take device tensors and run the same maths with CUDA kernels (moe_layer_cuda.cc; the
// communicator must then work on device memory: an NcclCommunicator, or any communicator when
// ep_size == 1).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/parameter.h"
#include "core/profiler.h"
#include "core/tensor.h"
#include "models/layers/layer.h"
#include "models/moe/capacity.h"

namespace moe {

struct MoeLayerOptions {
  int dim = 0;
  int hidden = 0;
  int num_experts = 8;
  int top_k = 2;
  int64_t group_tokens = 0;  // rows per routing group
  double capacity_factor_train = 1.05;
  double capacity_factor_eval = 1.25;
  CapacityRounding rounding = CapacityRounding::kCeil;
  bool batch_prioritized = false;
  bool dropless = false;
  float noise_scale = 1.f;  // noise std = noise_scale / num_experts
  float importance_weight = 0.005f;
  float load_weight = 0.005f;
  float switch_weight = 0.f;
  float z_weight = 0.f;
};

// What changes every step; set before Forward.
struct MoeStepContext {
  bool training = true;
  int64_t step = 0;
  int64_t first_global_group = 0;   // global id of this rank's first routing group
  int64_t num_global_groups = 1;    // groups in the global batch (aux losses are their mean)
  Profiler* profiler = nullptr;
};

// Per-forward statistics, summed over this rank's groups (the trainer reduces over ranks).
struct MoeMetrics {
  std::vector<int64_t> tokens_per_expert;  // kept assignments per global expert
  int64_t assignments = 0;                 // tokens * k
  int64_t dropped = 0;                     // assignments that found their expert full
  int64_t capacity_slots = 0;              // slots offered (C * E * groups); 0 when dropless
  double aux_loss = 0;                     // weighted, already divided by num_global_groups
  double importance_loss = 0, load_loss = 0, switch_loss = 0, z_loss = 0;  // unweighted sums
};

class ExpertBank;

class MoeLayer : public Layer {
 public:
  MoeLayer(const std::string& name, const MoeLayerOptions& options, Communicator* comm,
           uint64_t seed);
  ~MoeLayer() override;

  void SetStepContext(const MoeStepContext& ctx) { ctx_ = ctx; }
  Tensor Forward(const Tensor& x) override;
  Tensor Backward(const Tensor& dy) override;
  std::vector<Parameter*> Parameters() override;
  // Moves every parameter's value and grad to `device` (copies; grads keep their values) and
  // drops the state of the last Forward. Inputs must then live on that device.
  void MoveTo(Device device) override;

  const MoeMetrics& metrics() const { return metrics_; }
  const MoeLayerOptions& options() const { return opt_; }
  // Capacity per (group, expert) for the current mode; -1 when dropless.
  int64_t CurrentCapacity() const;
  const std::string& name() const { return name_; }

 private:
  struct Routing;  // per-forward routing state (defined in the .cc)
  void Route(const Tensor& x);
  void BuildSendLayout();
  Tensor ExchangeToExperts(const Tensor& send, const char* phase);
  Tensor ExchangeFromExperts(const Tensor& expert_rows, const char* phase);
  // CUDA path (moe_layer_cuda.cc, compiled when MOE_EP_HAS_CUDA): device routing state and
  // pinned staging buffers live in CudaState, defined there.
  struct CudaState;
  Tensor ForwardCuda(const Tensor& x);
  Tensor BackwardCuda(const Tensor& dy);

  std::string name_;
  MoeLayerOptions opt_;
  Communicator* comm_;
  uint64_t seed_;
  int ep_size_, ep_rank_, experts_per_rank_;
  Parameter router_;  // [D, E], dense: replicated on every rank
  std::unique_ptr<ExpertBank> experts_;
  MoeStepContext ctx_;
  MoeMetrics metrics_;
  std::shared_ptr<Routing> routing_;
  std::shared_ptr<CudaState> cuda_;  // CUDA path only
};

}  // namespace moe
