#include "comm/mpi_communicator.h"

#include <glog/logging.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "comm/mpi_check.h"
#include "comm/mpi_pairwise.h"

namespace moe {
namespace {

constexpr int64_t kMaxInt = INT_MAX;

// Exclusive prefix sums, with a check that no count is negative.
std::vector<int64_t> Displacements(const std::vector<int64_t>& counts, const char* what,
                                   GroupKind g) {
  std::vector<int64_t> displs(counts.size());
  int64_t offset = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    CHECK_GE(counts[i], 0) << GroupName(g) << " all-to-all-v: " << what << "[" << i
                           << "] is negative";
    displs[i] = offset;
    offset += counts[i];
  }
  return displs;
}

// MPI_Alltoallv takes int counts and displacements (in floats here).
void CheckFitsInInt(const std::vector<int64_t>& counts, const std::vector<int64_t>& displs,
                    const char* what, GroupKind g) {
  for (size_t i = 0; i < counts.size(); ++i)
    CHECK(counts[i] <= kMaxInt && displs[i] <= kMaxInt)
        << GroupName(g) << " all-to-all-v: the " << what << " block of group rank " << i
        << " (count " << counts[i] << ", displacement " << displs[i]
        << " floats) exceeds MPI_Alltoallv's int limit " << kMaxInt
        << "; for exchanges this large select AllToAllAlgorithm::kPairwise on every rank";
}

std::vector<int> ToInt(const std::vector<int64_t>& v) { return std::vector<int>(v.begin(), v.end()); }

// Collectives on counts above INT_MAX run as successive calls on slices of at most INT_MAX.
template <typename Fn>
void ForEachIntSlice(int64_t count, Fn fn) {
  CHECK_GE(count, 0);
  for (int64_t offset = 0; offset < count; offset += kMaxInt)
    fn(offset, static_cast<int>(std::min(kMaxInt, count - offset)));
}

}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm world, int ep_size) : max_message_floats_(kMaxInt) {
  int initialized = 0;
  MPI_CHECK(MPI_Initialized(&initialized));
  CHECK(initialized) << "MpiCommunicator needs MPI_Init to have been called";
  MPI_CHECK(MPI_Comm_dup(world, &world_));
  MPI_CHECK(MPI_Comm_set_errhandler(world_, MPI_ERRORS_RETURN));
  MPI_CHECK(MPI_Comm_size(world_, &layout_.world_size));
  MPI_CHECK(MPI_Comm_rank(world_, &layout_.world_rank));
  std::string error;  // Abort below names the world rank and size, set just above.
  if (!MakeLayout(layout_.world_size, layout_.world_rank, ep_size, &layout_, &error))
    Abort("process groups: " + error, 1);

  watchdog_ = std::make_unique<CollectiveWatchdog>(world_, kDefaultCollectiveTimeoutSeconds);
  MPI_CHECK(MPI_Comm_split(world_, layout_.dp_rank, layout_.ep_rank, &expert_));
  MPI_CHECK(MPI_Comm_split(world_, layout_.ep_rank, layout_.dp_rank, &data_));
  MPI_CHECK(MPI_Comm_set_errhandler(expert_, MPI_ERRORS_RETURN));
  MPI_CHECK(MPI_Comm_set_errhandler(data_, MPI_ERRORS_RETURN));
  MPI_CHECK(MPI_Comm_rank(expert_, &expert_rank_));
  MPI_CHECK(MPI_Comm_size(expert_, &expert_size_));
  MPI_CHECK(MPI_Comm_rank(data_, &data_rank_));
  MPI_CHECK(MPI_Comm_size(data_, &data_size_));
  // MPI and our arithmetic must agree: models index experts by these ranks.
  CHECK_EQ(expert_rank_, layout_.ep_rank);
  CHECK_EQ(expert_size_, layout_.ep_size);
  CHECK_EQ(data_rank_, layout_.dp_rank);
  CHECK_EQ(data_size_, layout_.dp_size);
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_CHECK(MPI_Finalized(&finalized));
  if (finalized) return;  // MPI freed everything already; freeing now would be an error.
  node_splits_.clear();
  watchdog_.reset();
  for (MPI_Comm* c : {&data_, &expert_, &world_})
    if (*c != MPI_COMM_NULL) MPI_CHECK(MPI_Comm_free(c));
}

MPI_Comm MpiCommunicator::comm(GroupKind g) const {
  switch (g) {
    case GroupKind::kWorld: return world_;
    case GroupKind::kExpert: return expert_;
    case GroupKind::kData: return data_;
  }
  LOG(FATAL) << "unknown GroupKind " << static_cast<int>(g);
  return MPI_COMM_NULL;
}

int MpiCommunicator::Rank(GroupKind g) const { return GroupRank(layout_, g); }

int MpiCommunicator::Size(GroupKind g) const { return GroupSize(layout_, g); }

void MpiCommunicator::set_all_to_all_algorithm(AllToAllAlgorithm a) { algorithm_ = a; }

void MpiCommunicator::set_max_message_floats(int64_t n) {
  CHECK(n >= 1 && n <= kMaxInt) << "max message floats " << n << " must be in [1, INT_MAX]";
  max_message_floats_ = n;
}

void MpiCommunicator::Finish(MPI_Request* requests, int n, const char* op, GroupKind g) {
  if (n == 0) return;
  watchdog_->Wait(
      [requests, n] {
        int flag = 0;
        MPI_CHECK(MPI_Testall(n, requests, &flag, MPI_STATUSES_IGNORE));
        return flag != 0;
      },
      std::string(op) + " on the " + GroupName(g) + " group (" + std::to_string(Size(g)) +
          " ranks)");
}

void MpiCommunicator::VerifyCounts(const std::vector<int64_t>& send_counts,
                                   const std::vector<int64_t>& recv_counts, GroupKind g) {
  const int p = Size(g);
  std::vector<int64_t> announced(p);
  MPI_Request req;
  MPI_CHECK(MPI_Ialltoall(send_counts.data(), 1, MPI_INT64_T, announced.data(), 1, MPI_INT64_T,
                          comm(g), &req));
  Finish(&req, 1, "all-to-all of counts (verification)", g);
  for (int peer = 0; peer < p; ++peer)
    CHECK_EQ(announced[peer], recv_counts[peer])
        << GroupName(g) << " all-to-all-v: " << GroupName(g) << " rank " << peer << " sends "
        << announced[peer] << " floats to " << GroupName(g) << " rank " << Rank(g)
        << ", which expects " << recv_counts[peer];
}

void MpiCommunicator::AllToAllV(const float* send, const std::vector<int64_t>& send_counts,
                                float* recv, const std::vector<int64_t>& recv_counts,
                                GroupKind g) {
  const int p = Size(g);
  const int me = Rank(g);
  CHECK_EQ(static_cast<int>(send_counts.size()), p)
      << GroupName(g) << " all-to-all-v: send_counts needs one entry per rank of the group";
  CHECK_EQ(static_cast<int>(recv_counts.size()), p)
      << GroupName(g) << " all-to-all-v: recv_counts needs one entry per rank of the group";
  CHECK_EQ(send_counts[me], recv_counts[me])
      << GroupName(g) << " all-to-all-v: rank " << me << " sends itself " << send_counts[me]
      << " floats but expects to receive " << recv_counts[me];
  const std::vector<int64_t> send_displs = Displacements(send_counts, "send_counts", g);
  const std::vector<int64_t> recv_displs = Displacements(recv_counts, "recv_counts", g);
  if (verify_counts_) VerifyCounts(send_counts, recv_counts, g);

  if (algorithm_ == AllToAllAlgorithm::kPairwise) {
    PairwiseAllToAllV(send, send_counts, send_displs, recv, recv_counts, recv_displs, g);
    return;
  }
  CheckFitsInInt(send_counts, send_displs, "send", g);
  CheckFitsInInt(recv_counts, recv_displs, "receive", g);
  const std::vector<int> sc = ToInt(send_counts), sd = ToInt(send_displs);
  const std::vector<int> rc = ToInt(recv_counts), rd = ToInt(recv_displs);
  MPI_Request req;
  MPI_CHECK(MPI_Ialltoallv(send, sc.data(), sd.data(), MPI_FLOAT, recv, rc.data(), rd.data(),
                           MPI_FLOAT, comm(g), &req));
  Finish(&req, 1, "all-to-all-v", g);
}

void MpiCommunicator::PairwiseAllToAllV(const float* send, const std::vector<int64_t>& send_counts,
                                        const std::vector<int64_t>& send_displs, float* recv,
                                        const std::vector<int64_t>& recv_counts,
                                        const std::vector<int64_t>& recv_displs, GroupKind g) {
  std::vector<MPI_Request> requests;
  PostPairwiseAllToAllV(comm(g), Rank(g), Size(g), max_message_floats_, send, send_counts,
                        send_displs, recv, recv_counts, recv_displs, &requests);
  Finish(requests.data(), static_cast<int>(requests.size()), "all-to-all-v (pairwise)", g);
}

std::unique_ptr<PendingExchange> MpiCommunicator::StartAllToAllV(
    const float* send, const std::vector<int64_t>& send_counts, float* recv,
    const std::vector<int64_t>& recv_counts, GroupKind g) {
  const int p = Size(g);
  CHECK_EQ(static_cast<int>(send_counts.size()), p)
      << GroupName(g) << " all-to-all-v: send_counts needs one entry per rank of the group";
  CHECK_EQ(static_cast<int>(recv_counts.size()), p)
      << GroupName(g) << " all-to-all-v: recv_counts needs one entry per rank of the group";
  const std::vector<int64_t> send_displs = Displacements(send_counts, "send_counts", g);
  const std::vector<int64_t> recv_displs = Displacements(recv_counts, "recv_counts", g);
  if (verify_counts_) VerifyCounts(send_counts, recv_counts, g);
  std::vector<MPI_Request> requests;
  PostPairwiseAllToAllV(comm(g), Rank(g), p, max_message_floats_, send, send_counts, send_displs,
                        recv, recv_counts, recv_displs, &requests);
  return std::make_unique<MpiPendingExchange>(
      watchdog_.get(), std::move(requests),
      std::string("all-to-all-v (started) on the ") + GroupName(g) + " group (" +
          std::to_string(p) + " ranks)");
}

ExpertNodeGroups MpiCommunicator::SplitExpertGroupByNode(int ranks_per_node) {
  CHECK_GE(ranks_per_node, 0) << "parallel.ranks_per_node=" << ranks_per_node
                              << ": must be >= 0 (0 = the machine's nodes)";
  auto it = node_splits_.find(ranks_per_node);
  if (it == node_splits_.end())
    it = node_splits_.emplace(ranks_per_node, MakeNodeSplit(ranks_per_node)).first;
  return ExpertNodeGroups{it->second.node.get(), it->second.cross.get()};
}

MpiCommunicator::NodeSplit MpiCommunicator::MakeNodeSplit(int ranks_per_node) {
  const int ep_rank = layout_.ep_rank, ep_size = layout_.ep_size;
  MPI_Comm node = MPI_COMM_NULL, cross = MPI_COMM_NULL;
  if (ranks_per_node > 0)
    MPI_CHECK(MPI_Comm_split(expert_, ep_rank / ranks_per_node, ep_rank, &node));
  else
    MPI_CHECK(MPI_Comm_split_type(expert_, MPI_COMM_TYPE_SHARED, ep_rank, MPI_INFO_NULL, &node));
  int node_rank = 0, node_size = 1;
  MPI_CHECK(MPI_Comm_rank(node, &node_rank));
  MPI_CHECK(MPI_Comm_size(node, &node_size));
  MPI_CHECK(MPI_Comm_split(expert_, node_rank, ep_rank, &cross));
  int cross_rank = 0;
  MPI_CHECK(MPI_Comm_rank(cross, &cross_rank));
  // The two-level exchange needs EP rank = node * L + position with the same L on every node.
  const bool consecutive = ep_size % node_size == 0 && node_rank == ep_rank % node_size &&
                           cross_rank == ep_rank / node_size;
  double checks[2] = {consecutive ? 1.0 : 0.0, -static_cast<double>(node_size)};
  double sizes[1] = {static_cast<double>(node_size)};
  AllReduceMin(checks, 2, GroupKind::kExpert);  // checks[1]: -(largest node)
  AllReduceMin(sizes, 1, GroupKind::kExpert);
  NodeSplit split;
  split.node = std::make_unique<MpiSubGroup>(node, "expert-node", watchdog_.get(),
                                             max_message_floats_);
  split.cross = std::make_unique<MpiSubGroup>(cross, "expert-cross-node", watchdog_.get(),
                                              max_message_floats_);
  CHECK(checks[0] == 1.0 && -checks[1] == sizes[0])
      << "parallel.ranks_per_node=" << ranks_per_node << ": the expert group of " << ep_size
      << " ranks does not split into equal nodes of consecutive EP ranks (this EP rank " << ep_rank
      << " is at position " << node_rank << " of a node of " << node_size
      << " ranks; node sizes range from " << sizes[0] << " to " << -checks[1] << ")";
  return split;
}

void MpiCommunicator::AllToAllInt64(const int64_t* send, int64_t* recv, int64_t count_per_peer,
                                    GroupKind g) {
  CHECK(count_per_peer >= 0 && count_per_peer <= kMaxInt)
      << GroupName(g) << " all-to-all (int64): count_per_peer " << count_per_peer
      << " must be in [0, INT_MAX]";
  const int n = static_cast<int>(count_per_peer);
  MPI_Request req;
  MPI_CHECK(MPI_Ialltoall(send, n, MPI_INT64_T, recv, n, MPI_INT64_T, comm(g), &req));
  Finish(&req, 1, "all-to-all of counts", g);
}

void MpiCommunicator::AllReduceSum(float* data, int64_t count, GroupKind g) {
  ForEachIntSlice(count, [&](int64_t off, int n) {
    MPI_Request req;
    MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, data + off, n, MPI_FLOAT, MPI_SUM, comm(g), &req));
    Finish(&req, 1, "all-reduce (sum)", g);
  });
}

void MpiCommunicator::AllReduceSum(double* data, int64_t count, GroupKind g) {
  ForEachIntSlice(count, [&](int64_t off, int n) {
    MPI_Request req;
    MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, data + off, n, MPI_DOUBLE, MPI_SUM, comm(g), &req));
    Finish(&req, 1, "all-reduce (sum)", g);
  });
}

void MpiCommunicator::AllReduceMax(double* data, int64_t count, GroupKind g) {
  ForEachIntSlice(count, [&](int64_t off, int n) {
    MPI_Request req;
    MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, data + off, n, MPI_DOUBLE, MPI_MAX, comm(g), &req));
    Finish(&req, 1, "all-reduce (max)", g);
  });
}

void MpiCommunicator::AllReduceMin(double* data, int64_t count, GroupKind g) {
  ForEachIntSlice(count, [&](int64_t off, int n) {
    MPI_Request req;
    MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, data + off, n, MPI_DOUBLE, MPI_MIN, comm(g), &req));
    Finish(&req, 1, "all-reduce (min)", g);
  });
}

void MpiCommunicator::Broadcast(float* data, int64_t count, int root, GroupKind g) {
  CHECK(root >= 0 && root < Size(g)) << GroupName(g) << " broadcast: root " << root
                                     << " is not a rank of a group of " << Size(g);
  ForEachIntSlice(count, [&](int64_t off, int n) {
    MPI_Request req;
    MPI_CHECK(MPI_Ibcast(data + off, n, MPI_FLOAT, root, comm(g), &req));
    Finish(&req, 1, "broadcast", g);
  });
}

void MpiCommunicator::Barrier(GroupKind g) {
  MPI_Request req;
  MPI_CHECK(MPI_Ibarrier(comm(g), &req));
  Finish(&req, 1, "barrier", g);
}

void MpiCommunicator::GatherBytes(const std::string& mine, int root, std::vector<std::string>* all) {
  const int p = layout_.world_size, me = layout_.world_rank;
  CHECK(mine.size() <= static_cast<size_t>(kMaxInt)) << "GatherBytes: " << mine.size() << " bytes";
  int len = static_cast<int>(mine.size());
  std::vector<int> lens(me == root ? p : 0), displs(me == root ? p : 0);
  MPI_Request req;
  MPI_CHECK(MPI_Igather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, root, world_, &req));
  Finish(&req, 1, "gather of lengths", GroupKind::kWorld);
  int64_t total = 0;
  for (int r = 0; r < static_cast<int>(lens.size()); ++r) {
    displs[r] = static_cast<int>(total);
    total += lens[r];
    CHECK_LE(total, kMaxInt) << "GatherBytes: more than INT_MAX bytes in all";
  }
  std::string joined(static_cast<size_t>(total), '\0');
  MPI_CHECK(MPI_Igatherv(mine.data(), len, MPI_BYTE, joined.data(), lens.data(), displs.data(),
                         MPI_BYTE, root, world_, &req));
  Finish(&req, 1, "gather", GroupKind::kWorld);
  all->clear();
  for (int r = 0; r < static_cast<int>(lens.size()); ++r) all->push_back(joined.substr(displs[r], lens[r]));
}

void MpiCommunicator::Abort(const std::string& reason, int exit_code) {
  LOG(ERROR) << "rank " << layout_.world_rank << " of " << layout_.world_size
             << ": ending the job: " << reason;
  google::FlushLogFiles(google::GLOG_INFO);
  std::fflush(stdout);
  std::fflush(stderr);
  MPI_CHECK(MPI_Abort(world_, exit_code));
  std::abort();  // MPI_Abort does not return; this only satisfies [[noreturn]].
}

}  // namespace moe
