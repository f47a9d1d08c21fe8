#include "comm/mpi_sub_group.h"

#include <glog/logging.h>

#include <climits>

#include "comm/mpi_check.h"
#include "comm/mpi_pairwise.h"

namespace moe {

MpiSubGroup::MpiSubGroup(MPI_Comm comm, std::string name, CollectiveWatchdog* watchdog,
                         int64_t max_message_floats)
    : comm_(comm), name_(std::move(name)), watchdog_(watchdog),
      max_message_floats_(max_message_floats) {
  MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  MPI_CHECK(MPI_Comm_size(comm_, &size_));
}

MpiSubGroup::~MpiSubGroup() {
  int finalized = 0;
  MPI_CHECK(MPI_Finalized(&finalized));
  if (!finalized && comm_ != MPI_COMM_NULL) MPI_CHECK(MPI_Comm_free(&comm_));
}

void MpiSubGroup::AllToAllV(const float* send, const std::vector<int64_t>& send_counts,
                            float* recv, const std::vector<int64_t>& recv_counts) {
  CHECK_EQ(static_cast<int>(send_counts.size()), size_)
      << name_ << " all-to-all-v: send_counts needs one entry per rank of the group";
  CHECK_EQ(static_cast<int>(recv_counts.size()), size_)
      << name_ << " all-to-all-v: recv_counts needs one entry per rank of the group";
  CHECK_EQ(send_counts[rank_], recv_counts[rank_])
      << name_ << " all-to-all-v: rank " << rank_ << " sends itself " << send_counts[rank_]
      << " floats but expects to receive " << recv_counts[rank_];
  const std::vector<int64_t> sd = CountDisplacements(send_counts, "send_counts", name_);
  const std::vector<int64_t> rd = CountDisplacements(recv_counts, "recv_counts", name_);
  std::vector<MPI_Request> requests;
  PostPairwiseAllToAllV(comm_, rank_, size_, max_message_floats_, send, send_counts, sd, recv,
                        recv_counts, rd, &requests);
  FinishRequests(watchdog_, &requests,
                 "all-to-all-v on the " + name_ + " group (" + std::to_string(size_) + " ranks)");
}

void MpiSubGroup::AllToAllInt64(const int64_t* send, int64_t* recv, int64_t count_per_peer) {
  CHECK(count_per_peer >= 0 && count_per_peer <= INT_MAX)
      << name_ << " all-to-all (int64): count_per_peer " << count_per_peer
      << " must be in [0, INT_MAX]";
  const int n = static_cast<int>(count_per_peer);
  std::vector<MPI_Request> requests(1);
  MPI_CHECK(MPI_Ialltoall(send, n, MPI_INT64_T, recv, n, MPI_INT64_T, comm_, &requests[0]));
  FinishRequests(watchdog_, &requests,
                 "all-to-all of counts on the " + name_ + " group (" + std::to_string(size_) +
                     " ranks)");
}

}  // namespace moe
