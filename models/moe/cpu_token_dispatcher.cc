#include "models/moe/cpu_token_dispatcher.h"

#include <glog/logging.h>

#include <algorithm>

#include "comm/collective_watchdog.h"
#include "models/moe/block_permute.h"

namespace moe {

CpuTokenDispatcher::CpuTokenDispatcher(const std::string& layer, Communicator* comm,
                                       int num_experts, int dim)
    : layer_(layer), comm_(comm), num_experts_(num_experts), dim_(dim),
      ep_size_(comm->Size(GroupKind::kExpert)) {}

std::vector<int64_t> CpuTokenDispatcher::ReceivedBlockRows(const DispatchPlan& plan) {
  if (!plan.recv_block_rows.empty()) return plan.recv_block_rows;
  const int El = num_experts_ / ep_size_;
  std::vector<int64_t> recv(static_cast<int64_t>(ep_size_) * El * plan.groups, plan.capacity);
  if (plan.capacity < 0) {
    // Send layout per peer p: [l][g] = block (p * El + l, g), which is already contiguous.
    ScopedActivity act(layer_ + " dropless block sizes");
    comm_->AllToAllInt64(plan.block_rows.data(), recv.data(), El * plan.groups,
                         GroupKind::kExpert);
  }
  return recv;
}

int64_t CpuTokenDispatcher::SendRow(int64_t t, int r) const {
  const int64_t i = t * plan_.kc + r;
  const int64_t g = t / plan_.group_tokens;
  return layout_.block_offset[plan_.expert[i] * plan_.groups + g] + plan_.slot[i];
}

Tensor CpuTokenDispatcher::Dispatch(const Tensor& x, const DispatchPlan& plan) {
  plan_ = plan;
  const int64_t D = dim_;
  Tensor send;
  {
    ScopedPhase ph(profiler_, "dispatch_pack");
    recv_block_rows_ = ReceivedBlockRows(plan_);
    layout_ = ComputeDispatchLayout(plan_.block_rows, recv_block_rows_, num_experts_, ep_size_,
                                    plan_.groups);
    send = Tensor::Zeros({layout_.send_rows, D});  // padding slots stay zero
    for (int64_t t = 0; t < plan_.rows; ++t)
      for (int r = 0; r < plan_.kc; ++r) {
        if (plan_.slot[t * plan_.kc + r] < 0) continue;
        std::copy(x.data() + t * D, x.data() + (t + 1) * D, send.data() + SendRow(t, r) * D);
      }
  }
  return ExchangeToExperts(send, "a2a_dispatch");
}

Tensor CpuTokenDispatcher::Combine(const Tensor& expert_out) {
  returned_ = ExchangeFromExperts(expert_out, "a2a_combine");
  const int64_t D = dim_;
  Tensor y = Tensor::Zeros({plan_.rows, D});
  ScopedPhase ph(profiler_, "combine");
  for (int64_t t = 0; t < plan_.rows; ++t) {
    float* yt = y.data() + t * D;
    for (int r = 0; r < plan_.kc; ++r) {
      const int64_t i = t * plan_.kc + r;
      if (plan_.slot[i] < 0) continue;
      const float w = plan_.gate[i];
      const float* o = returned_.data() + SendRow(t, r) * D;
      for (int64_t j = 0; j < D; ++j) yt[j] += w * o[j];
    }
  }
  return y;
}

// d(expert output) = gate * dy; d(gate) = <dy, expert output>. A dropped choice contributes
// nothing, so its gate gets no gradient from here.
Tensor CpuTokenDispatcher::CombineBackward(const Tensor& dy, const GateGradTarget& gate_grad) {
  CHECK(gate_grad.d_gate != nullptr) << layer_ << ": the host dispatcher writes d(gate) per choice";
  const int64_t D = dim_;
  Tensor d_returned;
  {
    ScopedPhase ph(profiler_, "combine_bwd");
    d_returned = Tensor::Zeros({layout_.send_rows, D});
    for (int64_t t = 0; t < plan_.rows; ++t) {
      const float* dyt = dy.data() + t * D;
      for (int r = 0; r < plan_.kc; ++r) {
        const int64_t i = t * plan_.kc + r;
        if (plan_.slot[i] < 0) continue;
        const int64_t row = SendRow(t, r);
        const float w = plan_.gate[i];
        const float* o = returned_.data() + row * D;
        float* dout = d_returned.data() + row * D;
        double dg = 0;
        for (int64_t j = 0; j < D; ++j) {
          dout[j] = w * dyt[j];
          dg += static_cast<double>(dyt[j]) * o[j];
        }
        gate_grad.d_gate[i] = static_cast<float>(dg);
      }
    }
  }
  if (gate_grad.on_written) gate_grad.on_written();
  return ExchangeToExperts(d_returned, "a2a_combine_bwd");
}

Tensor CpuTokenDispatcher::DispatchBackward(const Tensor& d_expert_in) {
  Tensor d_send = ExchangeFromExperts(d_expert_in, "a2a_dispatch_bwd");
  const int64_t D = dim_;
  Tensor dx = Tensor::Zeros({plan_.rows, D});
  ScopedPhase ph(profiler_, "dispatch_bwd");
  for (int64_t t = 0; t < plan_.rows; ++t) {
    float* dxt = dx.data() + t * D;
    for (int r = 0; r < plan_.kc; ++r) {
      if (plan_.slot[t * plan_.kc + r] < 0) continue;
      const float* ds = d_send.data() + SendRow(t, r) * D;
      for (int64_t j = 0; j < D; ++j) dxt[j] += ds[j];
    }
  }
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
