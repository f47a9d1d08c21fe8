// HIERARCHICAL: the host dispatcher whose expert-group exchanges run in two levels, inside each
// node and then one message per node pair and position (comm/two_level_all_to_all.h). Pack,
// layout, combine and every backward are the FLAT dispatcher's (CpuTokenDispatcher) over a
// communicator whose expert all-to-all-v is the two-level one, so the output is FLAT's bit for
// bit; only the route of the bytes differs. All four data exchanges (dispatch, combine and their
// backward) take the two levels; the dropless block sizes still go in one flat integer exchange.
// Nodes: ranks_per_node consecutive EP ranks (> 0; simulated nodes) or the machine's nodes (0).
#pragma once

#include <string>
#include <vector>

#include "comm/communicator.h"
#include "comm/two_level_all_to_all.h"
#include "models/moe/cpu_token_dispatcher.h"
#include "models/moe/token_dispatcher.h"

namespace moe {

class HierarchicalTokenDispatcher : public TokenDispatcher {
 public:
  // Splits comm's expert group by node (collective over the expert group, once per
  // communicator and ranks_per_node).
  HierarchicalTokenDispatcher(const std::string& layer, Communicator* comm, int num_experts,
                              int dim, int ranks_per_node);

  void BeginStep(Profiler* profiler) override { flat_.BeginStep(profiler); }
  void EndStep() override { flat_.EndStep(); }
  Tensor Dispatch(const Tensor& x, const DispatchPlan& plan) override {
    return flat_.Dispatch(x, plan);
  }
  const std::vector<int64_t>& expert_rows() const override { return flat_.expert_rows(); }
  Tensor Combine(const Tensor& expert_out) override { return flat_.Combine(expert_out); }
  Tensor CombineBackward(const Tensor& dy, const GateGradTarget& gate_grad) override {
    return flat_.CombineBackward(dy, gate_grad);
  }
  Tensor DispatchBackward(const Tensor& d_expert_in) override {
    return flat_.DispatchBackward(d_expert_in);
  }

 private:
  TwoLevelExpertCommunicator two_level_;
  CpuTokenDispatcher flat_;  // exchanges through two_level_
};

}  // namespace moe
