#include "comm/self_communicator.h"

#include <glog/logging.h>

#include <algorithm>
#include <cstdlib>

namespace moe {

void SelfCommunicator::AllToAllV(const float* send, const std::vector<int64_t>& send_counts,
                                 float* recv, const std::vector<int64_t>& recv_counts, GroupKind) {
  CHECK_EQ(send_counts.size(), 1u);
  CHECK_EQ(recv_counts.size(), 1u);
  CHECK_EQ(send_counts[0], recv_counts[0]) << "self all-to-all: send and receive counts differ";
  std::copy(send, send + send_counts[0], recv);
}

void SelfCommunicator::AllToAllInt64(const int64_t* send, int64_t* recv, int64_t count_per_peer,
                                     GroupKind) {
  std::copy(send, send + count_per_peer, recv);
}

namespace {

class SelfSubGroup : public SubGroup {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void AllToAllV(const float* send, const std::vector<int64_t>& send_counts, float* recv,
                 const std::vector<int64_t>& recv_counts) override {
    CHECK_EQ(send_counts.size(), 1u);
    CHECK_EQ(recv_counts.size(), 1u);
    CHECK_EQ(send_counts[0], recv_counts[0]) << "self all-to-all: send and receive counts differ";
    std::copy(send, send + send_counts[0], recv);
  }
  void AllToAllInt64(const int64_t* send, int64_t* recv, int64_t count_per_peer) override {
    std::copy(send, send + count_per_peer, recv);
  }
};

}  // namespace

ExpertNodeGroups SelfCommunicator::SplitExpertGroupByNode(int ranks_per_node) {
  CHECK_GE(ranks_per_node, 0) << "parallel.ranks_per_node=" << ranks_per_node;
  if (!node_) {
    node_ = std::make_unique<SelfSubGroup>();
    cross_ = std::make_unique<SelfSubGroup>();
  }
  return ExpertNodeGroups{node_.get(), cross_.get()};
}

void SelfCommunicator::Abort(const std::string& reason, int exit_code) {
  LOG(ERROR) << reason;
  google::FlushLogFiles(google::GLOG_INFO);
  std::exit(exit_code);
}

}  // namespace moe
