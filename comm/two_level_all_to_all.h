// The expert group's all-to-all-v in two levels (the hierarchical all-to-all of Tutel's 2DH and
// DeepSpeed): with nodes of L consecutive EP ranks (EP rank = node * L + position),
//   1. inside each node, position j hands position i every block it holds for the ranks at
//      position i on all nodes (one node-level all-to-all-v; the block sizes travel first in a
//      node-level integer all-to-all, N values per pair, so any counts work);
//   2. across nodes, position i sends node m, in ONE message, the L blocks its node holds for
//      (m, i) (one all-to-all-v per position over the N nodes).
// Each rank then holds its blocks ordered by source EP rank: exactly what AllToAllV on the expert
// group delivers, bit for bit. Inter-node messages per step: N - 1 per rank instead of
// (N - 1) * L, each L times larger; every byte crosses the node boundary once and is copied
// twice more in memory (the two rearrangements).
#pragma once

#include <cstdint>
#include <vector>

#include "comm/communicator.h"
#include "comm/forwarding_communicator.h"

namespace moe {

// send_counts / recv_counts in floats, one per EP rank, as Communicator::AllToAllV takes them.
void TwoLevelAllToAllV(const ExpertNodeGroups& groups, const float* send,
                       const std::vector<int64_t>& send_counts, float* recv,
                       const std::vector<int64_t>& recv_counts);

// Blocks laid out [a][b] (sizes[a * B + b] floats each) rewritten as [b][a].
void TransposeBlocks(const float* in, float* out, const std::vector<int64_t>& sizes, int A, int B);

// A Communicator that is `base` in every respect except that AllToAllV on the expert group runs
// in two levels (TwoLevelAllToAllV over `groups`). Lets the host dispatcher's pack, layout and
// combine run unchanged over the hierarchical exchange.
class TwoLevelExpertCommunicator : public ForwardingCommunicator {
 public:
  TwoLevelExpertCommunicator(Communicator* base, ExpertNodeGroups groups);

  void AllToAllV(const float* send, const std::vector<int64_t>& send_counts, float* recv,
                 const std::vector<int64_t>& recv_counts, GroupKind g) override;

 private:
  ExpertNodeGroups groups_;
};

}  // namespace moe
