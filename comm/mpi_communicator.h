// Communicator over MPI, on host memory. One object per process, built collectively over a world
// communicator; it owns three communicators of its own (duplicates, so its traffic never matches
// anybody else's messages):
//   world  - a duplicate of the given world;
//   expert - MPI_Comm_split(color = dp_rank, key = ep_rank): the ep_size consecutive world ranks
//            that together hold all experts, ordered by ep_rank;
//   data   - MPI_Comm_split(color = ep_rank, key = dp_rank): the ranks holding replicas of the
//            same experts, ordered by dp_rank.
// All of them use MPI_ERRORS_RETURN and every call goes through MPI_CHECK, so an MPI error is a
// glog FATAL naming the call (which, with InstallMpiAbortOnFatal, ends the job).
//
// Counts are int64 in the interface and int in MPI. AllToAllV has two algorithms, chosen per
// communicator (the choice must be the same on every rank; it is a setting, not decided per call,
// so that no extra collective is needed to agree on it):
//   kPairwise (default): Irecv/Isend with every peer (nearest first) plus a local copy for the
//     own block; blocks above max_message_floats (INT_MAX by default) go as several messages, so
//     any size works;
//   kAlltoallv: one MPI_Ialltoallv; CHECK-fails with a clear message if a count or displacement
//     exceeds INT_MAX floats (8 GiB), naming the way out.
// Both are non-blocking so the watchdog can finish them (below). Against a blocking
// MPI_Alltoall of the same bytes on 4 ranks (median of 5 runs, tests/bench/RESULTS.md), the
// pairwise exchange took 0.97-1.12x at 4 KiB-4 MiB per peer, MPI_Ialltoallv (Open MPI 4.1's
// libnbc schedule) 1.10-1.31x below 512 KiB and 1.00-1.08x above.
// AllReduce/Broadcast split counts above INT_MAX into successive calls.
//
// Every collective runs as its non-blocking MPI variant and is finished by the collective
// watchdog (collective_watchdog.h): one that has not completed within collective_timeout()
// seconds (600 unless set) ends the job with a message naming the step, the phase and the ranks
// that did not answer, and exit code kExitCollectiveTimeout.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "comm/collective_watchdog.h"
#include "comm/communicator.h"
#include "comm/mpi_sub_group.h"
#include "comm/process_groups.h"

namespace moe {

enum class AllToAllAlgorithm { kAlltoallv, kPairwise };

// Long enough for any real step's collective (a slow rank's whole forward pass included).
constexpr double kDefaultCollectiveTimeoutSeconds = 600;

class MpiCommunicator : public Communicator {
 public:
  // Collective over `world`: every rank of it must construct one with the same ep_size. An
  // invalid ep_size (<= 0, or not dividing the world size) ends the job through Abort with
  // LayoutError's message, naming parallel.ep_size and the world size.
  MpiCommunicator(MPI_Comm world, int ep_size);
  // Frees the communicators (MPI_Comm_free is collective: destroy it on every rank, before
  // MPI_Finalize; after MPI_Finalize it frees nothing).
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  const ProcessGroupLayout& layout() const { return layout_; }
  // The MPI communicator behind a group (e.g. to broadcast an NCCL unique id).
  MPI_Comm comm(GroupKind g) const;

  int Rank(GroupKind g) const override;
  int Size(GroupKind g) const override;
  void AllToAllV(const float* send, const std::vector<int64_t>& send_counts, float* recv,
                 const std::vector<int64_t>& recv_counts, GroupKind g) override;
  void AllToAllInt64(const int64_t* send, int64_t* recv, int64_t count_per_peer,
                     GroupKind g) override;
  // Always the pairwise algorithm (a non-blocking MPI_Ialltoallv would serve too, but one
  // algorithm keeps overlapped and blocking exchanges alike); finished through the watchdog.
  std::unique_ptr<PendingExchange> StartAllToAllV(const float* send,
                                                  const std::vector<int64_t>& send_counts,
                                                  float* recv,
                                                  const std::vector<int64_t>& recv_counts,
                                                  GroupKind g) override;
  // Node: MPI_Comm_split of the expert group by ep_rank / ranks_per_node (> 0), or
  // MPI_Comm_split_type(MPI_COMM_TYPE_SHARED) (0); cross: split by position in the node.
  ExpertNodeGroups SplitExpertGroupByNode(int ranks_per_node) override;
  void AllReduceSum(float* data, int64_t count, GroupKind g) override;
  void AllReduceSum(double* data, int64_t count, GroupKind g) override;
  void AllReduceMax(double* data, int64_t count, GroupKind g) override;
  void AllReduceMin(double* data, int64_t count, GroupKind g) override;
  void Broadcast(float* data, int64_t count, int root, GroupKind g) override;
  void Barrier(GroupKind g) override;
  // World rank `root` receives every rank's bytes, in world-rank order; the others get an empty
  // vector. For small host records (checkpoint manifests), through the watchdog like the rest.
  void GatherBytes(const std::string& mine, int root, std::vector<std::string>* all);
  // LOG(ERROR)s "rank R of W: reason", flushes glog, then MPI_Abort(world, exit_code).
  [[noreturn]] void Abort(const std::string& reason, int exit_code) override;

  // Debug aid (off by default, costs one extra MPI_Alltoall per AllToAllV): before each
  // AllToAllV, exchange the send counts and CHECK that each peer sends exactly what this rank
  // expects to receive; a mismatch is otherwise a truncation error or silently unused space.
  void set_verify_counts(bool on) { verify_counts_ = on; }
  // See the top of this file; must be the same on every rank of a group.
  void set_all_to_all_algorithm(AllToAllAlgorithm a);
  AllToAllAlgorithm all_to_all_algorithm() const { return algorithm_; }
  // kPairwise only: the most floats one message carries (INT_MAX unless lowered, which tests do
  // to cut blocks into many messages with small buffers). Must be the same on every rank.
  void set_max_message_floats(int64_t n);
  // Seconds a collective may take before the watchdog ends the job (<= 0: never). Must be the
  // same on every rank. NcclCommunicator waits through the same watchdog.
  void set_collective_timeout(double seconds) { watchdog_->set_timeout(seconds); }
  double collective_timeout() const { return watchdog_->timeout(); }
  CollectiveWatchdog& watchdog() const { return *watchdog_; }

 private:
  // Completes n started requests through the watchdog; op and g name them in its message.
  void Finish(MPI_Request* requests, int n, const char* op, GroupKind g);
  void VerifyCounts(const std::vector<int64_t>& send_counts,
                    const std::vector<int64_t>& recv_counts, GroupKind g);
  void PairwiseAllToAllV(const float* send, const std::vector<int64_t>& send_counts,
                         const std::vector<int64_t>& send_displs, float* recv,
                         const std::vector<int64_t>& recv_counts,
                         const std::vector<int64_t>& recv_displs, GroupKind g);

  struct NodeSplit {
    std::unique_ptr<MpiSubGroup> node, cross;
  };
  NodeSplit MakeNodeSplit(int ranks_per_node);

  ProcessGroupLayout layout_;
  std::map<int, NodeSplit> node_splits_;  // by ranks_per_node; freed before the groups
  MPI_Comm world_ = MPI_COMM_NULL;
  MPI_Comm expert_ = MPI_COMM_NULL;
  MPI_Comm data_ = MPI_COMM_NULL;
  int expert_rank_ = 0, expert_size_ = 1, data_rank_ = 0, data_size_ = 1;
  bool verify_counts_ = false;
  AllToAllAlgorithm algorithm_ = AllToAllAlgorithm::kPairwise;
  int64_t max_message_floats_;
  std::unique_ptr<CollectiveWatchdog> watchdog_;
};

}  // namespace moe
