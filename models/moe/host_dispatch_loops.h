// The host dispatchers' received block sizes and row loops (FLAT: cpu_token_dispatcher.cc;
// each chunk of PIPELINED: pipelined_token_dispatcher.cc), written once. `plan` is the rows being
// moved (a whole forward, or one chunk of whole routing groups); row pointers (x, y, dy, dx,
// d_gate) point at the plan's first row; `layout` gives the send rows of the plan's blocks.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/tensor.h"
#include "models/moe/token_dispatcher.h"

namespace moe {

// Row of the send buffer that choice r of plan row t occupies (its slot must be >= 0).
inline int64_t SendRowOf(const DispatchPlan& plan, const DispatchLayout& layout, int64_t t, int r) {
  const int64_t i = t * plan.kc + r;
  const int64_t g = t / plan.group_tokens;
  return layout.block_offset[plan.expert[i] * plan.groups + g] + plan.slot[i];
}

// Rows per received block [EP * El * G] of `plan`: its recv_block_rows when the planner gave
// them, else all C, or (dropless) exchanged with the EP peers, which only then know the sizes.
// `layer` names the exchange in the profiler and the watchdog.
std::vector<int64_t> ReceivedBlockRows(const DispatchPlan& plan, Communicator* comm,
                                       int num_experts, const std::string& layer);

// The send buffer [layout.send_rows, D]: every kept choice's row copied to its slot; padding
// slots stay zero.
Tensor PackRows(const DispatchPlan& plan, const DispatchLayout& layout, const float* x,
                int64_t D);
// y += sum over kept choices of gate * returned row (returned in send layout).
void CombineRows(const DispatchPlan& plan, const DispatchLayout& layout, const float* returned,
                 int64_t D, float* y);
// d(returned) [layout.send_rows, D] = gate * dy per kept choice; d_gate[choice] = <dy, returned
// row> (a dropped choice contributes nothing, so its gate gets no gradient from here).
Tensor CombineBackwardRows(const DispatchPlan& plan, const DispatchLayout& layout,
                           const float* returned, const float* dy, int64_t D, float* d_gate);
// dx += the send-layout gradient of every kept choice.
void DispatchBackwardRows(const DispatchPlan& plan, const DispatchLayout& layout,
                          const float* d_send, int64_t D, float* dx);

}  // namespace moe
