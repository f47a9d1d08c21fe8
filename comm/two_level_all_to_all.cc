#include "comm/two_level_all_to_all.h"

#include <glog/logging.h>

#include <algorithm>

namespace moe {

void TransposeBlocks(const float* in, float* out, const std::vector<int64_t>& sizes, int A,
                     int B) {
  CHECK_EQ(static_cast<int64_t>(sizes.size()), int64_t{A} * B);
  std::vector<int64_t> in_offset(sizes.size());
  int64_t offset = 0;
  for (size_t k = 0; k < sizes.size(); ++k) {
    in_offset[k] = offset;
    offset += sizes[k];
  }
  for (int b = 0; b < B; ++b)
    for (int a = 0; a < A; ++a) {
      const int64_t k = int64_t{a} * B + b;
      out = std::copy(in + in_offset[k], in + in_offset[k] + sizes[k], out);
    }
}

namespace {

// Sum of sizes[a * B + b] over b (rows of an [A][B] table).
std::vector<int64_t> RowSums(const std::vector<int64_t>& sizes, int A, int B) {
  std::vector<int64_t> sums(A, 0);
  for (int a = 0; a < A; ++a)
    for (int b = 0; b < B; ++b) sums[a] += sizes[int64_t{a} * B + b];
  return sums;
}

// The same table transposed: [B][A].
std::vector<int64_t> Transposed(const std::vector<int64_t>& sizes, int A, int B) {
  std::vector<int64_t> t(sizes.size());
  for (int a = 0; a < A; ++a)
    for (int b = 0; b < B; ++b) t[int64_t{b} * A + a] = sizes[int64_t{a} * B + b];
  return t;
}

int64_t Total(const std::vector<int64_t>& sizes) {
  int64_t total = 0;
  for (int64_t s : sizes) total += s;
  return total;
}

}  // namespace

void TwoLevelAllToAllV(const ExpertNodeGroups& groups, const float* send,
                       const std::vector<int64_t>& send_counts, float* recv,
                       const std::vector<int64_t>& recv_counts) {
  CHECK(groups.node != nullptr && groups.cross != nullptr);
  const int L = groups.node->size(), N = groups.cross->size();
  CHECK_EQ(static_cast<int64_t>(send_counts.size()), int64_t{N} * L)
      << "two-level all-to-all-v: one send count per EP rank (" << N << " nodes x " << L << ")";
  CHECK_EQ(static_cast<int64_t>(recv_counts.size()), int64_t{N} * L)
      << "two-level all-to-all-v: one receive count per EP rank";
  // Level 1: send_counts is [node m][position i]; position i gets its column, node-major.
  const std::vector<int64_t> lane_sizes = Transposed(send_counts, N, L);  // [i][m]
  std::vector<float> lanes(static_cast<size_t>(Total(send_counts)));
  TransposeBlocks(send, lanes.data(), send_counts, N, L);
  // staged_sizes[j][m]: what position j of this node holds for (m, this position).
  std::vector<int64_t> staged_sizes(static_cast<size_t>(N) * L);
  groups.node->AllToAllInt64(lane_sizes.data(), staged_sizes.data(), N);
  const std::vector<int64_t> staged_rows = RowSums(staged_sizes, L, N);
  std::vector<float> staged(static_cast<size_t>(Total(staged_rows)));
  groups.node->AllToAllV(lanes.data(), RowSums(lane_sizes, L, N), staged.data(), staged_rows);
  // Level 2: [j][m] -> [m][j], then one message per node; it arrives [node][j] = EP rank order.
  std::vector<float> by_node(staged.size());
  TransposeBlocks(staged.data(), by_node.data(), staged_sizes, L, N);
  groups.cross->AllToAllV(by_node.data(), RowSums(Transposed(staged_sizes, L, N), N, L), recv,
                          RowSums(recv_counts, N, L));
}

TwoLevelExpertCommunicator::TwoLevelExpertCommunicator(Communicator* base,
                                                       ExpertNodeGroups groups)
    : ForwardingCommunicator(base), groups_(groups) {
  CHECK(base_ != nullptr);
  CHECK_EQ(groups_.node->size() * groups_.cross->size(), base_->Size(GroupKind::kExpert))
      << "two-level exchange: nodes x ranks per node must cover the expert group";
}

void TwoLevelExpertCommunicator::AllToAllV(const float* send,
                                           const std::vector<int64_t>& send_counts, float* recv,
                                           const std::vector<int64_t>& recv_counts, GroupKind g) {
  if (g != GroupKind::kExpert) {
    base_->AllToAllV(send, send_counts, recv, recv_counts, g);
    return;
  }
  TwoLevelAllToAllV(groups_, send, send_counts, recv, recv_counts);
}

}  // namespace moe
