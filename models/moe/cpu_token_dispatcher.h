// The host-memory TokenDispatcher: pack and combine loops on the CPU, all-to-all-v over the
// communicator's expert group (MPI). The plan's per-choice arrays are host arrays.
#pragma once

#include <string>
#include <vector>

#include "comm/communicator.h"
#include "models/moe/token_dispatcher.h"

namespace moe {

class CpuTokenDispatcher : public TokenDispatcher {
 public:
  // layer: the MoE layer's name (watchdog and profiler labels); E experts of width dim, sharded
  // over comm's expert group.
  CpuTokenDispatcher(const std::string& layer, Communicator* comm, int num_experts, int dim);

  Tensor Dispatch(const Tensor& x, const DispatchPlan& plan) override;
  const std::vector<int64_t>& expert_rows() const override { return layout_.expert_rows; }
  Tensor Combine(const Tensor& expert_out) override;
  Tensor CombineBackward(const Tensor& dy, const GateGradTarget& gate_grad) override;
  Tensor DispatchBackward(const Tensor& d_expert_in) override;

 private:
  // Send layout -> all-to-all -> expert-major rows, and its inverse.
  Tensor ExchangeToExperts(const Tensor& send, const char* phase);
  Tensor ExchangeFromExperts(const Tensor& expert_rows, const char* phase);

  std::string layer_;
  Communicator* comm_;
  int num_experts_, dim_, ep_size_;
  DispatchPlan plan_;
  std::vector<int64_t> recv_block_rows_;
  DispatchLayout layout_;
  Tensor returned_;  // expert outputs back at the source, send layout
};

}  // namespace moe
