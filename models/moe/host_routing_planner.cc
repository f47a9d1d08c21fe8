#include "models/moe/host_routing_planner.h"

#include <glog/logging.h>

namespace moe {

const DispatchPlan& HostRoutingPlanner::Plan(const Tensor& x) {
  // One state reused step after step (its vectors keep their memory); a Backward reads the
  // state of the last Forward, as before.
  if (R_) R_->Reset(); else R_ = std::make_shared<RoutingState>();
  {
    ScopedPhase ph(L_.ctx.profiler, "router");
    StartRouting(L_, x.dim(0), R_.get());
    DecideOnHost(L_, x, L_.router.weight().value.data(), L_.router.attr_proj(),
                 L_.router.attr_norm(), R_.get());
  }
  plan_ = DispatchPlan();
  plan_.rows = R_->rows;
  plan_.groups = R_->groups;
  plan_.group_tokens = L_.opt.group_tokens;
  plan_.kc = R_->kc;
  plan_.capacity = L_.Capacity();
  plan_.expert = R_->expert.data();
  plan_.slot = R_->slot.data();
  plan_.gate = R_->gate.data();
  plan_.block_rows = R_->block_rows;
  return plan_;
}

GateGradTarget HostRoutingPlanner::StartBackward() {
  CHECK(R_) << L_.name << ": Backward before Forward";
  d_gate_.assign(R_->rows * R_->kc, 0.f);
  GateGradTarget t;
  t.d_gate = d_gate_.data();
  return t;
}

void HostRoutingPlanner::Backward(Tensor* dx) {
  ScopedPhase ph(L_.ctx.profiler, "router_bwd");
  const RoutingState& R = *R_;
  if (!L_.opt.external_decision) {
    L_.router.Backward(CleanLogitsGradOnHost(L_, d_gate_, R_.get()), R, dx);
    return;
  }
  // An external decision's gates are shared by the image's tokens: their gradients sum per
  // image into the owner's buffer (which also collects the other layers' share).
  ExternalImageDecision* ext = L_.external;
  CHECK(ext != nullptr) << L_.name << ": no external decision";
  const int k = R.kc;
  const int64_t T = L_.opt.tokens_per_image;
  CHECK_EQ(static_cast<int64_t>(ext->d_gate.size()), R.router_rows * k)
      << L_.name << ": the owner must size d_gate like the decision";
  for (int64_t t = 0; t < R.rows; ++t)
    for (int r = 0; r < k; ++r) ext->d_gate[(t / T) * k + r] += d_gate_[t * k + r];
}

}  // namespace moe
