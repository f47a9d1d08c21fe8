// RoutingPlanner: makes an MoE layer's routing plan for one Forward on one backend, and runs the
// router's backward. The host planner (host_routing_planner.h) runs the router and the rule on
// the CPU; the CUDA planners decide plain token top-k with device kernels, or any rule on the
// host with the same code as the CPU path and upload the plan (cuda_*_planner.h). The backend
// factory (moe_backend.h) pairs each planner with the TokenDispatcher of its backend.
#pragma once

#include <memory>
#include <string>

#include "comm/communicator.h"
#include "models/moe/moe_options.h"
#include "models/moe/router.h"
#include "models/moe/routing_rule.h"
#include "models/moe/routing_state.h"
#include "models/moe/token_dispatcher.h"

namespace moe {

// The layer's state a planner reads (references into the owning MoeLayer: options and step
// context change between steps, the external decision may be set anew each step).
struct MoeLayerView {
  const std::string& name;
  const MoeLayerOptions& opt;
  const MoeStepContext& ctx;
  Router& router;
  const RoutingRuleImpl& rule;
  Communicator* comm;
  uint64_t seed;
  MoeMetrics& metrics;
  ExternalImageDecision* const& external;
  const DispatcherOptions& dispatch;
  int64_t Capacity() const;  // the rule's capacity for the step's mode; -1 when dropless
};

class RoutingPlanner {
 public:
  virtual ~RoutingPlanner() = default;
  // Decides the plan for x and resets and fills the layer's metrics (a device planner may leave
  // part of them to FinishForward).
  virtual const DispatchPlan& Plan(const Tensor& x) = 0;
  // After the combine has been enqueued: host work that may overlap the device.
  virtual void FinishForward() {}
  // Before the combine backward: where it writes d(gate).
  virtual GateGradTarget StartBackward() = 0;
  // d(gate) -> the router's parameters, and the router input's share into *dx.
  virtual void Backward(Tensor* dx) = 0;
  // The last plan on the host, for routing analytics; nullptr where it never reached the host.
  virtual const RoutingState* host_state() const { return nullptr; }
};

// The host part every planner that decides on the host shares: the router's input and logits
// from the host tensor x (empty is allowed for attribute routing without the token; `proj` /
// `norm` are the attribute embedding to use), then the rule (DecideFromLogits). An external
// decision skips the router.
void DecideOnHost(const MoeLayerView& L, const Tensor& x, const float* router_w, Layer* proj,
                  Layer* norm, RoutingState* R);
// The rule's decision from R->clean_logits, and the plan's size checks.
void DecideFromLogits(const MoeLayerView& L, RoutingState* R);
// Everything but the router-weight GEMMs of the host backward: the rule's gate backward and the
// router's softmax / noise / aux terms -> d(clean logits) [router rows, E].
std::vector<float> CleanLogitsGradOnHost(const MoeLayerView& L, const std::vector<float>& d_gate,
                                         RoutingState* R);
// Resets R's size fields for a Forward of `rows` rows: rows, groups, kc, router rows, metrics.
void StartRouting(const MoeLayerView& L, int64_t rows, RoutingState* R);

}  // namespace moe
