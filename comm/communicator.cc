#include "comm/communicator.h"

#include <glog/logging.h>

namespace moe {

namespace {

// What a communicator without non-blocking exchanges returns: the exchange has already finished.
class FinishedExchange : public PendingExchange {
 public:
  void Wait() override {}
};

}  // namespace

std::unique_ptr<PendingExchange> Communicator::StartAllToAllV(
    const float* send, const std::vector<int64_t>& send_counts, float* recv,
    const std::vector<int64_t>& recv_counts, GroupKind g) {
  AllToAllV(send, send_counts, recv, recv_counts, g);
  return std::make_unique<FinishedExchange>();
}

ExpertNodeGroups Communicator::SplitExpertGroupByNode(int ranks_per_node) {
  LOG(FATAL) << "parallel.ranks_per_node=" << ranks_per_node
             << ": this communicator cannot split the expert group into nodes";
  return {};
}

}  // namespace moe
