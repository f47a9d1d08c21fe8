// The communicator of a one-process job (world = EP = DP = 1): every collective is a local copy.
// Not a mock: it is the exact semantics of a group of size one, and lets single-process unit
// tests, gradient checks and benchmarks drive the MoE layer without mpirun.
#pragma once

#include <memory>

#include "comm/communicator.h"

namespace moe {

class SelfCommunicator : public Communicator {
 public:
  int Rank(GroupKind) const override { return 0; }
  int Size(GroupKind) const override { return 1; }
  void AllToAllV(const float* send, const std::vector<int64_t>& send_counts, float* recv,
                 const std::vector<int64_t>& recv_counts, GroupKind g) override;
  void AllToAllInt64(const int64_t* send, int64_t* recv, int64_t count_per_peer,
                     GroupKind g) override;
  void AllReduceSum(float*, int64_t, GroupKind) override {}
  void AllReduceSum(double*, int64_t, GroupKind) override {}
  void AllReduceMax(double*, int64_t, GroupKind) override {}
  void AllReduceMin(double*, int64_t, GroupKind) override {}
  void Broadcast(float*, int64_t, int, GroupKind) override {}
  void Barrier(GroupKind) override {}
  // One node of one rank: both levels are groups of one.
  ExpertNodeGroups SplitExpertGroupByNode(int ranks_per_node) override;
  [[noreturn]] void Abort(const std::string& reason, int exit_code) override;

 private:
  std::unique_ptr<SubGroup> node_, cross_;
};

}  // namespace moe
