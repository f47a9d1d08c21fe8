// The pieces of a non-blocking MPI exchange that MpiCommunicator and its sub-groups share: the
// pairwise all-to-all-v (Irecv/Isend with every peer, nearest first, blocks cut into messages of
// at most max_message_floats) and a handle that finishes started requests through the watchdog.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "comm/collective_watchdog.h"
#include "comm/communicator.h"

namespace moe {

// Posts the receives and sends of one all-to-all-v on `comm` (this rank `me` of `size`) into
// *requests and copies the own block; counts and displacements in floats.
void PostPairwiseAllToAllV(MPI_Comm comm, int me, int size, int64_t max_message_floats,
                           const float* send, const std::vector<int64_t>& send_counts,
                           const std::vector<int64_t>& send_displs, float* recv,
                           const std::vector<int64_t>& recv_counts,
                           const std::vector<int64_t>& recv_displs,
                           std::vector<MPI_Request>* requests);

// Exclusive prefix sums of per-peer counts; `what` and `group` name a negative count.
std::vector<int64_t> CountDisplacements(const std::vector<int64_t>& counts, const char* what,
                                        const std::string& group);

// Completes every request through the watchdog (`what` names the operation in its message).
void FinishRequests(CollectiveWatchdog* watchdog, std::vector<MPI_Request>* requests,
                    const std::string& what);

// Started requests, finished by Wait (or by the destructor, so none is ever left in flight).
class MpiPendingExchange : public PendingExchange {
 public:
  MpiPendingExchange(CollectiveWatchdog* watchdog, std::vector<MPI_Request> requests,
                     std::string what)
      : watchdog_(watchdog), requests_(std::move(requests)), what_(std::move(what)) {}
  ~MpiPendingExchange() override { Wait(); }
  void Wait() override { FinishRequests(watchdog_, &requests_, what_); }

 private:
  CollectiveWatchdog* watchdog_;
  std::vector<MPI_Request> requests_;
  std::string what_;
};

}  // namespace moe
