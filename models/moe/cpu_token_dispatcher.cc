#include "models/moe/cpu_token_dispatcher.h"

#include <glog/logging.h>

#include <algorithm>

#include "comm/collective_watchdog.h"
#include "models/moe/block_permute.h"
#include "models/moe/host_dispatch_loops.h"

namespace moe {

CpuTokenDispatcher::CpuTokenDispatcher(const std::string& layer, Communicator* comm,
                                       int num_experts, int dim)
    : layer_(layer), comm_(comm), num_experts_(num_experts), dim_(dim),
      ep_size_(comm->Size(GroupKind::kExpert)) {}

Tensor CpuTokenDispatcher::Dispatch(const Tensor& x, const DispatchPlan& plan) {
  plan_ = plan;
  Tensor send;
  {
    ScopedPhase ph(profiler_, "dispatch_pack");
    recv_block_rows_ = ReceivedBlockRows(plan_, comm_, num_experts_, layer_);
    layout_ = ComputeDispatchLayout(plan_.block_rows, recv_block_rows_, num_experts_, ep_size_,
                                    plan_.groups);
    send = PackRows(plan_, layout_, x.data(), dim_);
  }
  return ExchangeToExperts(send, "a2a_dispatch");
}

Tensor CpuTokenDispatcher::Combine(const Tensor& expert_out) {
  returned_ = ExchangeFromExperts(expert_out, "a2a_combine");
  Tensor y = Tensor::Zeros({plan_.rows, dim_});
  ScopedPhase ph(profiler_, "combine");
  CombineRows(plan_, layout_, returned_.data(), dim_, y.data());
  return y;
}

Tensor CpuTokenDispatcher::CombineBackward(const Tensor& dy, const GateGradTarget& gate_grad) {
  CHECK(gate_grad.d_gate != nullptr) << layer_ << ": the host dispatcher writes d(gate) per choice";
  Tensor d_returned;
  {
    ScopedPhase ph(profiler_, "combine_bwd");
    d_returned =
        CombineBackwardRows(plan_, layout_, returned_.data(), dy.data(), dim_, gate_grad.d_gate);
  }
  if (gate_grad.on_written) gate_grad.on_written();
  return ExchangeToExperts(d_returned, "a2a_combine_bwd");
}

Tensor CpuTokenDispatcher::DispatchBackward(const Tensor& d_expert_in) {
  Tensor d_send = ExchangeFromExperts(d_expert_in, "a2a_dispatch_bwd");
  Tensor dx = Tensor::Zeros({plan_.rows, dim_});
  ScopedPhase ph(profiler_, "dispatch_bwd");
  DispatchBackwardRows(plan_, layout_, d_send.data(), dim_, dx.data());
  return dx;
}

Tensor CpuTokenDispatcher::ExchangeToExperts(const Tensor& send, const char* phase) {
  const int64_t D = dim_;
  const int El = num_experts_ / ep_size_;
  Tensor received({layout_.recv_rows, D});
  std::vector<int64_t> sc(ep_size_), rc(ep_size_);
  for (int p = 0; p < ep_size_; ++p) {
    sc[p] = layout_.send_rows_per_peer[p] * D;
    rc[p] = layout_.recv_rows_per_peer[p] * D;
  }
  {
    ScopedExchange ph(profiler_, phase, layout_.send_rows * D * sizeof(float));
    ScopedActivity act(layer_ + " " + phase);  // names the phase if the watchdog fires
    comm_->AllToAllV(send.data(), sc, received.data(), rc, GroupKind::kExpert);
  }
  Tensor expert_major({layout_.recv_rows, D});
  PermuteBlocks(received.data(), expert_major.data(), D, recv_block_rows_, ep_size_, El,
                plan_.groups, /*to_expert_major=*/true);
  return expert_major;
}

Tensor CpuTokenDispatcher::ExchangeFromExperts(const Tensor& expert_rows, const char* phase) {
  const int64_t D = dim_;
  const int El = num_experts_ / ep_size_;
  Tensor src_major(expert_rows.shape());
  PermuteBlocks(expert_rows.data(), src_major.data(), D, recv_block_rows_, ep_size_, El,
                plan_.groups, /*to_expert_major=*/false);
  Tensor back({layout_.send_rows, D});
  std::vector<int64_t> sc(ep_size_), rc(ep_size_);
  for (int p = 0; p < ep_size_; ++p) {
    sc[p] = layout_.recv_rows_per_peer[p] * D;
    rc[p] = layout_.send_rows_per_peer[p] * D;
  }
  ScopedExchange ph(profiler_, phase, expert_rows.numel() * sizeof(float));
  ScopedActivity act(layer_ + " " + phase);
  comm_->AllToAllV(src_major.data(), sc, back.data(), rc, GroupKind::kExpert);
  return back;
}

}  // namespace moe
