#include "comm/mpi_pairwise.h"

#include <glog/logging.h>

#include <algorithm>

#include "comm/mpi_check.h"

namespace moe {

void PostPairwiseAllToAllV(MPI_Comm comm, int me, int size, int64_t max_message_floats,
                           const float* send, const std::vector<int64_t>& send_counts,
                           const std::vector<int64_t>& send_displs, float* recv,
                           const std::vector<int64_t>& recv_counts,
                           const std::vector<int64_t>& recv_displs,
                           std::vector<MPI_Request>* requests) {
  // Messages between one pair of ranks on one tag and communicator are matched in the order they
  // were posted (MPI's non-overtaking rule), so the slices of a block need no tags of their own.
  constexpr int kTag = 0;
  const int p = size;
  const int64_t slice = max_message_floats;
  for (int k = 1; k < p; ++k) {  // receives first, from the nearest peers first
    const int peer = (me - k + p) % p;
    for (int64_t off = 0; off < recv_counts[peer]; off += slice) {
      const int n = static_cast<int>(std::min(slice, recv_counts[peer] - off));
      requests->emplace_back();
      MPI_CHECK(MPI_Irecv(recv + recv_displs[peer] + off, n, MPI_FLOAT, peer, kTag, comm,
                          &requests->back()));
    }
  }
  for (int k = 1; k < p; ++k) {
    const int peer = (me + k) % p;
    for (int64_t off = 0; off < send_counts[peer]; off += slice) {
      const int n = static_cast<int>(std::min(slice, send_counts[peer] - off));
      requests->emplace_back();
      MPI_CHECK(MPI_Isend(send + send_displs[peer] + off, n, MPI_FLOAT, peer, kTag, comm,
                          &requests->back()));
    }
  }
  std::copy(send + send_displs[me], send + send_displs[me] + send_counts[me],
            recv + recv_displs[me]);
}

std::vector<int64_t> CountDisplacements(const std::vector<int64_t>& counts, const char* what,
                                        const std::string& group) {
  std::vector<int64_t> displs(counts.size());
  int64_t offset = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    CHECK_GE(counts[i], 0) << group << " all-to-all-v: " << what << "[" << i << "] is negative";
    displs[i] = offset;
    offset += counts[i];
  }
  return displs;
}

void FinishRequests(CollectiveWatchdog* watchdog, std::vector<MPI_Request>* requests,
                    const std::string& what) {
  if (requests->empty()) return;
  MPI_Request* r = requests->data();
  const int n = static_cast<int>(requests->size());
  watchdog->Wait(
      [r, n] {
        int flag = 0;
        MPI_CHECK(MPI_Testall(n, r, &flag, MPI_STATUSES_IGNORE));
        return flag != 0;
      },
      what);
  requests->clear();
}

}  // namespace moe
