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
#include "comm/forwarding_communicator.h"

namespace moe {

// A device Communicator that is `base` in every respect except that AllToAllV on the expert
// group runs in two levels over nodes of `ranks_per_node` consecutive EP ranks.
class CudaTwoLevelExpertCommunicator : public ForwardingCommunicator {
 public:
  // base: works on device memory (an NcclCommunicator); ranks_per_node > 0 divides its EP size.
  CudaTwoLevelExpertCommunicator(const std::string& layer, Communicator* base,
                                 int ranks_per_node);

  void AllToAllV(const float* send, const std::vector<int64_t>& send_counts, float* recv,
                 const std::vector<int64_t>& recv_counts, GroupKind g) override;

 private:
  // staged[j][m]: floats node peer j holds for (node m, this position) after level 1.
  std::vector<int64_t> ExchangeLaneSizes(const std::vector<int64_t>& lane_sizes);

  int L_, N_;             // ranks per node, nodes
  int node_, position_;   // this rank's node and position in it
};

}  // namespace moe
