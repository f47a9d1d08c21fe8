#include "models/moe/dispatch_chunks.h"

#include <glog/logging.h>

#include <algorithm>

namespace moe {

namespace {

// The chunk of groups [g0, g1) of `plan`.
DispatchChunk ChunkOf(const DispatchPlan& plan, const std::vector<int64_t>& recv, int64_t g0,
                      int64_t g1, int num_experts, int ep_size) {
  const int64_t G = plan.groups;
  const int El = num_experts / ep_size;
  DispatchChunk ch;
  ch.first_group = g0;
  ch.first_row = g0 * plan.group_tokens;
  ch.plan = plan;
  ch.plan.rows = (g1 - g0) * plan.group_tokens;
  ch.plan.groups = g1 - g0;
  ch.plan.expert = plan.expert + ch.first_row * plan.kc;
  ch.plan.slot = plan.slot + ch.first_row * plan.kc;
  ch.plan.gate = plan.gate + ch.first_row * plan.kc;
  ch.plan.block_offset_device = nullptr;
  ch.plan.recv_block_rows_device = nullptr;
  ch.plan.block_rows.clear();
  for (int e = 0; e < num_experts; ++e)
    for (int64_t g = g0; g < g1; ++g) ch.plan.block_rows.push_back(plan.block_rows[e * G + g]);
  for (int64_t b = 0; b < int64_t{ep_size} * El; ++b)
    for (int64_t g = g0; g < g1; ++g) ch.recv_block_rows.push_back(recv[b * G + g]);
  ch.plan.recv_block_rows = ch.recv_block_rows;
  ch.layout = ComputeDispatchLayout(ch.plan.block_rows, ch.recv_block_rows, num_experts, ep_size,
                                    ch.plan.groups);
  return ch;
}

}  // namespace

std::vector<DispatchChunk> SplitIntoChunks(const DispatchPlan& plan,
                                           const std::vector<int64_t>& recv_block_rows,
                                           int num_experts, int ep_size, int max_chunks) {
  const int64_t G = plan.groups;
  CHECK_EQ(plan.rows, G * plan.group_tokens) << "pipelined dispatch: rows are not whole groups";
  CHECK_EQ(static_cast<int64_t>(plan.block_rows.size()), int64_t{num_experts} * G);
  CHECK_EQ(static_cast<int64_t>(recv_block_rows.size()), int64_t{num_experts} * G)
      << "pipelined dispatch: received block sizes [EP * El * G]";
  const int64_t K = std::max<int64_t>(1, std::min<int64_t>(max_chunks, G));
  std::vector<DispatchChunk> chunks;
  chunks.reserve(K);
  for (int64_t c = 0; c < K; ++c)
    chunks.push_back(ChunkOf(plan, recv_block_rows, c * G / K, (c + 1) * G / K, num_experts,
                             ep_size));
  return chunks;
}

}  // namespace moe
