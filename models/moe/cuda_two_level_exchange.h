// The expert group's all-to-all-v in two levels on DEVICE memory, for the CUDA HIERARCHICAL
// dispatcher: the same route as comm/two_level_all_to_all.h (nodes of L consecutive EP ranks,
// EP rank = node * L + position; first inside each node, then one message per node pair and
// position), built from the device communicator's own expert-group AllToAllV with zero counts
// for every rank outside the level's peers. NCCL posts no send/receive for a zero count
// (comm/nccl/nccl_communicator.h), so each level is a grouped ncclSend/ncclRecv among exactly its
// peers, on the communicator's stream, with its watchdog and count checks, and no new NCCL
// communicator is needed. The per-block sizes of level 2 travel first in one integer exchange
// (N values per node peer), copied to the host (one stream synchronisation per exchange), since
// NCCL needs every count on the host when the operation is posted.
//
// Each rank ends with its blocks ordered by source EP rank: exactly what the flat AllToAllV
// delivers, bit for bit (the bytes are only moved, never summed). The two rearrangements are one
// device-to-device copy per block (N * L copies per level), fine for the EP sizes of this project.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "comm/communicator.h"

namespace moe {

// A device Communicator that is `base` in every respect except that AllToAllV on the expert
// group runs in two levels over nodes of `ranks_per_node` consecutive EP ranks.
class CudaTwoLevelExpertCommunicator : public Communicator {
 public:
  // base: works on device memory (an NcclCommunicator); ranks_per_node > 0 divides its EP size.
  CudaTwoLevelExpertCommunicator(const std::string& layer, Communicator* base,
                                 int ranks_per_node);

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
  int MachineRanksPerNode() override { return base_->MachineRanksPerNode(); }
  bool works_on_device() const override { return base_->works_on_device(); }
  void* device_stream() const override { return base_->device_stream(); }
  [[noreturn]] void Abort(const std::string& reason, int exit_code) override {
    base_->Abort(reason, exit_code);
    std::abort();  // unreachable: the base ends the job (a virtual call loses [[noreturn]])
  }

 private:
  // staged[j][m]: floats node peer j holds for (node m, this position) after level 1.
  std::vector<int64_t> ExchangeLaneSizes(const std::vector<int64_t>& lane_sizes);

  Communicator* base_;
  int L_, N_;             // ranks per node, nodes
  int node_, position_;   // this rank's node and position in it
};

}  // namespace moe
