// The CPU backend's RoutingPlanner: router and rule on host arrays (routing_planner.h).
#pragma once

#include <memory>
#include <vector>

#include "models/moe/routing_planner.h"

namespace moe {

class HostRoutingPlanner : public RoutingPlanner {
 public:
  explicit HostRoutingPlanner(const MoeLayerView& layer) : L_(layer) {}
  const DispatchPlan& Plan(const Tensor& x) override;
  GateGradTarget StartBackward() override;
  void Backward(Tensor* dx) override;
  const RoutingState* host_state() const override { return R_.get(); }

 private:
  MoeLayerView L_;
  std::shared_ptr<RoutingState> R_;
  DispatchPlan plan_;
  std::vector<float> d_gate_;
};

}  // namespace moe
