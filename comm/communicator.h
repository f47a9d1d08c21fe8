// The collective operations the trainer needs, on one of three process groups.
//
// World = EP x DP. World rank r has expert-parallel rank r % ep_size (its position inside its EP
// group, which shares all experts between ep_size ranks) and data-parallel rank r / ep_size (which
// replica of the experts it holds). Models only see this interface: the MPI implementation works
// on host memory, the NCCL one (CUDA path) on device memory.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moe {

enum class GroupKind { kWorld, kExpert, kData };
const char* GroupName(GroupKind g);

// An exchange started by StartAllToAllV; its buffers must stay untouched until Wait returns.
class PendingExchange {
 public:
  virtual ~PendingExchange() = default;
  virtual void Wait() = 0;
};

// One level of the expert group split in two (ExpertNodeGroups): its own ranks and an
// all-to-all-v / integer all-to-all with Communicator's semantics on them.
class SubGroup {
 public:
  virtual ~SubGroup() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual void AllToAllV(const float* send, const std::vector<int64_t>& send_counts, float* recv,
                         const std::vector<int64_t>& recv_counts) = 0;
  virtual void AllToAllInt64(const int64_t* send, int64_t* recv, int64_t count_per_peer) = 0;
};

// The expert group as nodes of L consecutive EP ranks (EP rank = node * L + position), for
// exchanges that keep inter-node traffic aggregated (models/moe/hierarchical_token_dispatcher.h).
// Owned by the communicator that made them.
struct ExpertNodeGroups {
  SubGroup* node = nullptr;   // the L EP ranks of this rank's node, ranked by EP rank
  SubGroup* cross = nullptr;  // one EP rank per node, at this rank's position; ranked by node
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int Rank(GroupKind g) const = 0;
  virtual int Size(GroupKind g) const = 0;

  // Personalised exchange with per-peer counts (in floats). send holds the blocks for peers
  // 0..P-1 back to back, recv receives them the same way; counts may be zero.
  virtual void AllToAllV(const float* send, const std::vector<int64_t>& send_counts, float* recv,
                         const std::vector<int64_t>& recv_counts, GroupKind g) = 0;
  // Fixed-size exchange of integers (counts, plans): count_per_peer values to and from each peer.
  virtual void AllToAllInt64(const int64_t* send, int64_t* recv, int64_t count_per_peer,
                             GroupKind g) = 0;
  // AllToAllV started now and finished by the handle's Wait, so that work can run while it
  // travels. The default runs it to completion here (a communicator without non-blocking
  // exchanges); buffers must outlive Wait either way.
  virtual std::unique_ptr<PendingExchange> StartAllToAllV(const float* send,
                                                          const std::vector<int64_t>& send_counts,
                                                          float* recv,
                                                          const std::vector<int64_t>& recv_counts,
                                                          GroupKind g);
  // The expert group split into nodes (see ExpertNodeGroups): ranks_per_node > 0 consecutive EP
  // ranks per node, 0 the machine's nodes (ranks sharing memory). Made on the first call for a
  // ranks_per_node (collective over the expert group: every member calls it together) and kept.
  // Ends the job with a clear message when the nodes are uneven or not consecutive EP ranks, or
  // when the communicator cannot split (the default).
  virtual ExpertNodeGroups SplitExpertGroupByNode(int ranks_per_node);
  // EP ranks per node of the machine's nodes: the node size of SplitExpertGroupByNode(0), with
  // its checks (collective over the expert group; ends the job naming parallel.ranks_per_node
  // when the nodes are uneven or not consecutive EP ranks). For device layers that route in
  // levels themselves and need only the size; a device communicator answers from the host
  // communicator it was built from.
  virtual int MachineRanksPerNode() { return SplitExpertGroupByNode(0).node->size(); }

  virtual void AllReduceSum(float* data, int64_t count, GroupKind g) = 0;
  virtual void AllReduceSum(double* data, int64_t count, GroupKind g) = 0;
  virtual void AllReduceMax(double* data, int64_t count, GroupKind g) = 0;
  virtual void AllReduceMin(double* data, int64_t count, GroupKind g) = 0;
  virtual void Broadcast(float* data, int64_t count, int root, GroupKind g) = 0;
  virtual void Barrier(GroupKind g) = 0;

  // For device-memory communicators (NCCL): true, and the CUDA stream (a cudaStream_t) their
  // collectives are queued on, so device layers can order their work against it without knowing
  // which implementation they were given. Host-memory communicators: false, nullptr.
  virtual bool works_on_device() const { return false; }
  virtual void* device_stream() const { return nullptr; }

  // Ends every rank of the job now, after printing reason on this rank. Never returns.
  [[noreturn]] virtual void Abort(const std::string& reason, int exit_code) = 0;
};

}  // namespace moe
