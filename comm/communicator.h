// The collective operations the trainer needs, on one of three process groups.
//
// World = EP x DP. World rank r has expert-parallel rank r % ep_size (its position inside its EP
// group, which shares all experts between ep_size ranks) and data-parallel rank r / ep_size (which
// replica of the experts it holds). Models only see this interface: the MPI implementation works
// on host memory, the NCCL one (CUDA path) on device memory.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moe {

enum class GroupKind { kWorld, kExpert, kData };
const char* GroupName(GroupKind g);

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
