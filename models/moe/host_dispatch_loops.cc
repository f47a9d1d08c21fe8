#include "models/moe/host_dispatch_loops.h"

#include <algorithm>

#include "comm/collective_watchdog.h"

namespace moe {

std::vector<int64_t> ReceivedBlockRows(const DispatchPlan& plan, Communicator* comm,
                                       int num_experts, const std::string& layer) {
  if (!plan.recv_block_rows.empty()) return plan.recv_block_rows;
  const int ep_size = comm->Size(GroupKind::kExpert);
  const int El = num_experts / ep_size;
  std::vector<int64_t> recv(static_cast<int64_t>(ep_size) * El * plan.groups, plan.capacity);
  if (plan.capacity < 0) {
    // Send layout per peer p: [l][g] = block (p * El + l, g), which is already contiguous.
    ScopedActivity act(layer + " dropless block sizes");
    comm->AllToAllInt64(plan.block_rows.data(), recv.data(), El * plan.groups,
                        GroupKind::kExpert);
  }
  return recv;
}

Tensor PackRows(const DispatchPlan& plan, const DispatchLayout& layout, const float* x,
                int64_t D) {
  Tensor send = Tensor::Zeros({layout.send_rows, D});
  for (int64_t t = 0; t < plan.rows; ++t)
    for (int r = 0; r < plan.kc; ++r) {
      if (plan.slot[t * plan.kc + r] < 0) continue;
      std::copy(x + t * D, x + (t + 1) * D, send.data() + SendRowOf(plan, layout, t, r) * D);
    }
  return send;
}

void CombineRows(const DispatchPlan& plan, const DispatchLayout& layout, const float* returned,
                 int64_t D, float* y) {
  for (int64_t t = 0; t < plan.rows; ++t) {
    float* yt = y + t * D;
    for (int r = 0; r < plan.kc; ++r) {
      const int64_t i = t * plan.kc + r;
      if (plan.slot[i] < 0) continue;
      const float w = plan.gate[i];
      const float* o = returned + SendRowOf(plan, layout, t, r) * D;
      for (int64_t j = 0; j < D; ++j) yt[j] += w * o[j];
    }
  }
}

Tensor CombineBackwardRows(const DispatchPlan& plan, const DispatchLayout& layout,
                           const float* returned, const float* dy, int64_t D, float* d_gate) {
  Tensor d_returned = Tensor::Zeros({layout.send_rows, D});
  for (int64_t t = 0; t < plan.rows; ++t) {
    const float* dyt = dy + t * D;
    for (int r = 0; r < plan.kc; ++r) {
      const int64_t i = t * plan.kc + r;
      if (plan.slot[i] < 0) continue;
      const int64_t row = SendRowOf(plan, layout, t, r);
      const float w = plan.gate[i];
      const float* o = returned + row * D;
      float* dout = d_returned.data() + row * D;
      double dg = 0;
      for (int64_t j = 0; j < D; ++j) {
        dout[j] = w * dyt[j];
        dg += static_cast<double>(dyt[j]) * o[j];
      }
      d_gate[i] = static_cast<float>(dg);
    }
  }
  return d_returned;
}

void DispatchBackwardRows(const DispatchPlan& plan, const DispatchLayout& layout,
                          const float* d_send, int64_t D, float* dx) {
  for (int64_t t = 0; t < plan.rows; ++t) {
    float* dxt = dx + t * D;
    for (int r = 0; r < plan.kc; ++r) {
      if (plan.slot[t * plan.kc + r] < 0) continue;
      const float* ds = d_send + SendRowOf(plan, layout, t, r) * D;
      for (int64_t j = 0; j < D; ++j) dxt[j] += ds[j];
    }
  }
}

}  // namespace moe
