// One level of the expert group split by node (Communicator::SplitExpertGroupByNode): an MPI
// communicator of its own (MPI_ERRORS_RETURN, every call checked), exchanging through the parent
// communicator's watchdog so a stuck peer is named as on any other collective.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "comm/collective_watchdog.h"
#include "comm/communicator.h"

namespace moe {

class MpiSubGroup : public SubGroup {
 public:
  // Takes ownership of `comm` (freed in the destructor); `name` labels the watchdog's messages.
  MpiSubGroup(MPI_Comm comm, std::string name, CollectiveWatchdog* watchdog,
              int64_t max_message_floats);
  ~MpiSubGroup() override;
  MpiSubGroup(const MpiSubGroup&) = delete;
  MpiSubGroup& operator=(const MpiSubGroup&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void AllToAllV(const float* send, const std::vector<int64_t>& send_counts, float* recv,
                 const std::vector<int64_t>& recv_counts) override;
  void AllToAllInt64(const int64_t* send, int64_t* recv, int64_t count_per_peer) override;

 private:
  MPI_Comm comm_;
  std::string name_;
  CollectiveWatchdog* watchdog_;
  int64_t max_message_floats_;
  int rank_ = 0, size_ = 1;
};

}  // namespace moe
