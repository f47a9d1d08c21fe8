// A Communicator that hands every call to `base`; a subclass overrides what it changes (the
// two-level expert exchanges: comm/two_level_all_to_all.h, models/moe/cuda_two_level_exchange.h).
// StartAllToAllV is deliberately NOT forwarded: its default runs this->AllToAllV, so a subclass's
// own exchange is what a non-blocking caller gets too.
#pragma once

#include <cstdlib>
#include <string>
#include <vector>

#include "comm/communicator.h"

namespace moe {

class ForwardingCommunicator : public Communicator {
 public:
  explicit ForwardingCommunicator(Communicator* base) : base_(base) {}

  int Rank(GroupKind g) const override { return base_->Rank(g); }
  int Size(GroupKind g) const override { return base_->Size(g); }
  void AllToAllV(const float* send, const std::vector<int64_t>& send_counts, float* recv,
                 const std::vector<int64_t>& recv_counts, GroupKind g) override {
    base_->AllToAllV(send, send_counts, recv, recv_counts, g);
  }
  void AllToAllInt64(const int64_t* send, int64_t* recv, int64_t count_per_peer,
                     GroupKind g) override {
    base_->AllToAllInt64(send, recv, count_per_peer, g);
  }
  ExpertNodeGroups SplitExpertGroupByNode(int ranks_per_node) override {
    return base_->SplitExpertGroupByNode(ranks_per_node);
  }
  int MachineRanksPerNode() override { return base_->MachineRanksPerNode(); }
  void AllReduceSum(float* d, int64_t n, GroupKind g) override { base_->AllReduceSum(d, n, g); }
  void AllReduceSum(double* d, int64_t n, GroupKind g) override { base_->AllReduceSum(d, n, g); }
  void AllReduceMax(double* d, int64_t n, GroupKind g) override { base_->AllReduceMax(d, n, g); }
  void AllReduceMin(double* d, int64_t n, GroupKind g) override { base_->AllReduceMin(d, n, g); }
  void Broadcast(float* d, int64_t n, int root, GroupKind g) override {
    base_->Broadcast(d, n, root, g);
  }
  void Barrier(GroupKind g) override { base_->Barrier(g); }
  bool works_on_device() const override { return base_->works_on_device(); }
  void* device_stream() const override { return base_->device_stream(); }
  [[noreturn]] void Abort(const std::string& reason, int exit_code) override {
    base_->Abort(reason, exit_code);
    std::abort();  // unreachable: the base ends the job (a virtual call loses [[noreturn]])
  }

 protected:
  Communicator* base_;
};

}  // namespace moe
