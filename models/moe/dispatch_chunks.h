// The PIPELINED dispatchers' split of one routing plan into chunks of whole routing groups (host
// bookkeeping, shared by the host dispatcher, pipelined_token_dispatcher.h, and the device one,
// cuda_pipelined_token_dispatcher.h). Chunk c holds groups [c*G/K, (c+1)*G/K): its rows are
// contiguous, so its plan is the whole plan's per-choice arrays from its first row on (host or
// device pointers alike), with the block sizes of its own groups only. Each chunk is then moved
// exactly as FLAT moves a whole plan.
#pragma once

#include <cstdint>
#include <vector>

#include "models/moe/token_dispatcher.h"

namespace moe {

struct DispatchChunk {
  int64_t first_group = 0, first_row = 0;
  DispatchPlan plan;  // the chunk's rows; the *_device fields are left unset (nullptr)
  std::vector<int64_t> recv_block_rows;  // [EP * El * chunk groups], as plan.recv_block_rows
  DispatchLayout layout;
};

// Splits `plan` into min(max_chunks, plan.groups) chunks (at least one). `recv_block_rows` is the
// whole plan's received block sizes [EP * El * G] (plan.recv_block_rows, or derived by the
// caller). The plan's rows must be whole routing groups (CHECKed).
std::vector<DispatchChunk> SplitIntoChunks(const DispatchPlan& plan,
                                           const std::vector<int64_t>& recv_block_rows,
                                           int num_experts, int ep_size, int max_chunks);

}  // namespace moe
