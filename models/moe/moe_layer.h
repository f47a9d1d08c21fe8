// MoeLayer: the expert-parallel MoE MLP, forward and backward, in three parts:
//   routing     Router (router.h: scores, noise, softmax, aux losses) + the configured
//               RoutingRule (routing_rule.h, rules/: the plan of (expert, slot, gate) choices)
//   dispatch    TokenDispatcher (token_dispatcher.h): pack into capacity buffers, all-to-all over
//               the expert-parallel group, expert-major rows, and back, gate-weighted combine
//   experts     ExpertBank (expert_bank.h): this rank's experts, one GEMM pair per expert
// Backward runs the same path in reverse (two more all-to-alls), then the router backward.
//
// Dropless mode replaces the fixed capacity by exact per-(group, expert) counts, exchanged with
// an integer all-to-all before the data all-to-all-v; the rest of the path is identical.
//
// Backend: chosen by the input's device, in one place (moe_backend.h), which pairs a routing
// planner with a token dispatcher. After MoveTo(Device::kCUDA), Forward and Backward take device
// tensors and run the same maths with CUDA kernels (the communicator must then work on device
// memory: an NcclCommunicator, or any communicator when ep_size == 1). models/moe/README.md walks
// through one training step file by file.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/parameter.h"
#include "core/profiler.h"
#include "core/tensor.h"
#include "models/layers/layer.h"
#include "models/moe/moe_options.h"
#include "models/moe/token_dispatcher.h"

namespace moe {

class ExpertBank;
class Router;
class RoutingRuleImpl;
struct MoeBackend;
struct MoeLayerView;

class MoeLayer : public Layer {
 public:
  MoeLayer(const std::string& name, const MoeLayerOptions& options, Communicator* comm,
           uint64_t seed);
  ~MoeLayer() override;

  void SetStepContext(const MoeStepContext& ctx) { ctx_ = ctx; }
  // options().external_decision: the decision the next Forward follows (kept by the caller, who
  // sizes d_gate and zeroes it before Backward), and the guidance metrics its owner computed
  // for this Forward (added to metrics(); call after Forward).
  void SetExternalDecision(ExternalImageDecision* d) { external_ = d; }
  void AddExternalMetrics(double aux_loss, double superclass_loss, int64_t superclass_correct);
  Tensor Forward(const Tensor& x) override;
  Tensor Backward(const Tensor& dy) override;
  std::vector<Parameter*> Parameters() override;
  // Moves every parameter's value and grad to `device` (copies; grads keep their values) and
  // drops the state of the last Forward. Inputs must then live on that device.
  void MoveTo(Device device) override;

  const MoeMetrics& metrics() const { return metrics_; }
  const MoeLayerOptions& options() const { return opt_; }
  // pMoE's experts-only phase switches kPatchTopL to hard gates mid-run. Call between steps
  // (never between a Forward and its Backward: the router backward reads the flag).
  void set_hard_gates(bool on) { opt_.hard_gates = on; }
  // How tokens travel (FLAT by default); drops the state of the last Forward. Call between steps.
  void SetDispatcherOptions(const DispatcherOptions& options);
  const DispatcherOptions& dispatcher_options() const { return dispatch_; }
  // Capacity per (group, expert) for the current mode; -1 when dropless.
  int64_t CurrentCapacity() const;
  const std::string& name() const { return name_; }
  // Routing analytics: calls fn(row, global expert, gate) for every kept assignment of the last
  // Forward on the host path (rows are this rank's input rows; rows / tokens_per_image is the
  // image when the caller's rows are per-image blocks). Not available after a CUDA Forward that
  // decided on the device.
  void ForEachKeptAssignment(const std::function<void(int64_t, int, float)>& fn) const;

 private:
  void CheckInput(const Tensor& x) const;
  // The planner and dispatcher for `device` (moe_backend.h), made on first use after a move.
  MoeBackend& BackendOn(Device device);

  std::string name_;
  MoeLayerOptions opt_;
  Communicator* comm_;
  uint64_t seed_;
  int ep_size_, ep_rank_, experts_per_rank_;
  std::unique_ptr<RoutingRuleImpl> rule_;
  std::unique_ptr<Router> router_;
  std::unique_ptr<ExpertBank> experts_;
  MoeStepContext ctx_;
  MoeMetrics metrics_;
  ExternalImageDecision* external_ = nullptr;
  DispatcherOptions dispatch_;
  std::unique_ptr<MoeLayerView> view_;
  std::unique_ptr<MoeBackend> backend_;
  int64_t forward_rows_ = -1;  // rows of the last Forward; -1 before one
};

}  // namespace moe
