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
class TwoLevelExpertCommunicator : public Communicator {
 public:
  TwoLevelExpertCommunicator(Communicator* base, ExpertNodeGroups groups);

  int Rank(GroupKind g) const override { return base_->Rank(g); }
  int Size(GroupKind g) const override { return base_->Size(g); }
  void AllToAllV(const float* send, const std::vector<int64_t>& send_counts, float* recv,
                 const std::vector<int64_t>& recv_counts, GroupKind g) override;
  void AllToAllInt64(const int64_t* send, int64_t* recv, int64_t count_per_peer,
                     GroupKind g) override {
    base_->AllToAllInt64(send, recv, count_per_peer, g);
  }
  void AllReduceSum(float* d, int64_t n, GroupKind g) override { base_->AllReduceSum(d, n, g); }
  void AllReduceSum(double* d, int64_t n, GroupKind g) override { base_->AllReduceSum(d, n, g); }
  void AllReduceMax(double* d, int64_t n, GroupKind g) override { base_->AllReduceMax(d, n, g); }
  void AllReduceMin(double* d, int64_t n, GroupKind g) override { base_->AllReduceMin(d, n, g); }
  void Broadcast(float* d, int64_t n, int root, GroupKind g) override {
    base_->Broadcast(d, n, root, g);
  }
  void Barrier(GroupKind g) override { base_->Barrier(g); }
  ExpertNodeGroups SplitExpertGroupByNode(int ranks_per_node) override {
    return base_->SplitExpertGroupByNode(ranks_per_node);
  }
  [[noreturn]] void Abort(const std::string& reason, int exit_code) override {
    base_->Abort(reason, exit_code);
  }

 private:
  Communicator* base_;
  ExpertNodeGroups groups_;
};

}  // namespace moe
