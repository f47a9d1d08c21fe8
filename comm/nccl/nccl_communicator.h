// Communicator over NCCL, on DEVICE memory: every float*/int64_t*/double* handed to it is a CUDA
// device pointer on this rank's GPU. One object per process, built collectively from an
// MpiCommunicator, whose group layout it mirrors exactly (same ranks, same order):
//   world, expert, data - one NCCL communicator each; for each, rank 0 of the matching MPI group
//   calls ncclGetUniqueId, MPI_Bcast's it over that group's MPI communicator, and every member
//   calls ncclCommInitRank with its MPI group rank. All ranks create them in the same order
//   (world, expert, data), so the blocking inits cannot cross.
//
// Streams: every operation is ENQUEUED on the stream given at construction. Callers order their
// own kernels on the same stream, or synchronise (cudaStreamSynchronize(stream())) before reading
// results on the host or from another stream.
//
// Watchdog: with the MpiCommunicator's collective timeout on (the default, 600 s), every operation
// then waits on the host for its completion (a CUDA event) through the same CollectiveWatchdog
// (collective_watchdog.h), also polling ncclCommGetAsyncError: an operation that does not finish
// in time gets the roll call and message, then ncclCommAbort on all three communicators (NCCL
// kernels waiting for an absent peer stop) and MPI_Abort. The price is one host wait per
// collective, so the host cannot run ahead of a collective to queue the next kernels; a timeout
// of 0 (--collective_timeout_s=0) keeps the operations asynchronous, without the watchdog.
// Not covered: connection set-up to a peer happens inside ncclGroupEnd at the first exchange with
// it (blocking NCCL communicators), before the watchdog waits.
//
// AllToAllV is ncclGroupStart + one ncclSend/ncclRecv per peer (the own block included; NCCL
// copies it locally) + ncclGroupEnd; a zero count posts no call for that peer, so the dropless
// all-to-all-v with empty experts costs nothing for them. NCCL counts are size_t: no INT_MAX limit.
//
// The MpiCommunicator must outlive this object: Abort and the count verification use its MPI
// communicators, MachineRanksPerNode its node split. Destroy this object on every rank before
// MPI_Finalize.
#pragma once

#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "comm/mpi_communicator.h"
#include "comm/process_groups.h"

namespace moe {

// Which GPU this rank drives, from its position among the ranks of its host.
struct DeviceBinding {
  int local_rank = 0;   // rank among the processes of this host (MPI_COMM_TYPE_SHARED)
  int local_size = 1;   // processes on this host
  int device = 0;       // local_rank % device_count; cudaSetDevice has been called with it
  bool shared_gpu = false;  // more local ranks than GPUs: several ranks drive one device
};

// Collective over `world`; call once per process after MPI_Init and BEFORE any NCCL call
// (ncclGetUniqueId included), since NCCL reads the environment set here once per process.
// Binds this rank to device local_rank % device_count (cudaSetDevice).
//
// One rank per GPU is the production layout. More local ranks than GPUs is refused with a
// LOG(FATAL) naming both counts and the option, unless allow_shared_gpu (testing only: it lets
// the multi-rank NCCL path run on one GPU). NCCL refuses two ranks of one communicator on the
// same device of the same host ("Duplicate GPU detected"): it compares each peer's host hash and
// GPU bus id. With allow_shared_gpu this function therefore gives every rank its own host hash
// (NCCL_HOSTID=moe-ep-rank<world rank>), so each looks like a separate node with one GPU, and
// makes the traffic between those "nodes" go through the socket transport on loopback
// (NCCL_SOCKET_IFNAME=lo, NCCL_IB_DISABLE=1). P2P and SHM are turned off (NCCL_P2P_DISABLE=1,
// NCCL_SHM_DISABLE=1): between "hosts" NCCL should not pick them anyway, and both assume two
// distinct GPUs (CUDA IPC of one device's memory into a context on the same device). These
// variables overwrite any set before, on every rank of such a host. It is slow (socket copies,
// processes time-sliced on one GPU) and only for tests.
DeviceBinding BindDeviceForRank(const MPI_Comm& world, bool allow_shared_gpu);

class NcclCommunicator : public Communicator {
 public:
  // Collective over mpi's world (every rank must construct one, in the same order relative to
  // other collectives). The current CUDA device (BindDeviceForRank) is the one NCCL uses.
  NcclCommunicator(MpiCommunicator& mpi, cudaStream_t stream);
  // ncclCommDestroy on all three (waits for the operations still enqueued to finish).
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  cudaStream_t stream() const { return stream_; }
  bool works_on_device() const override { return true; }
  void* device_stream() const override { return stream_; }
  const ProcessGroupLayout& layout() const { return layout_; }
  // The NCCL communicator behind a group (for code that needs NCCL calls of its own, on stream()).
  ncclComm_t nccl_comm(GroupKind g) const;
  // The machine's nodes come from the MPI communicator's split (its groups are this one's).
  int MachineRanksPerNode() override { return host_->MachineRanksPerNode(); }

  int Rank(GroupKind g) const override;
  int Size(GroupKind g) const override;
  // Device buffers; counts and their packed offsets in floats, as in Communicator.
  void AllToAllV(const float* send, const std::vector<int64_t>& send_counts, float* recv,
                 const std::vector<int64_t>& recv_counts, GroupKind g) override;
  void AllToAllInt64(const int64_t* send, int64_t* recv, int64_t count_per_peer,
                     GroupKind g) override;
  // In place, device buffers.
  void AllReduceSum(float* data, int64_t count, GroupKind g) override;
  void AllReduceSum(double* data, int64_t count, GroupKind g) override;
  void AllReduceMax(double* data, int64_t count, GroupKind g) override;
  void AllReduceMin(double* data, int64_t count, GroupKind g) override;
  void Broadcast(float* data, int64_t count, int root, GroupKind g) override;
  // Synchronising: an all-reduce of one device float on the group's NCCL communicator, then
  // cudaStreamSynchronize(stream()). Going through NCCL (not MPI_Barrier) means the barrier
  // also orders everything enqueued on the stream before it on every rank of the group, and it
  // cannot complete while any peer's earlier NCCL work is unfinished.
  void Barrier(GroupKind g) override;
  // LOG(ERROR)s "rank R of W: reason", flushes, ncclCommAbort's the three communicators (errors
  // ignored: we are ending anyway, and aborting unblocks NCCL kernels waiting on dead peers),
  // then MPI_Abort(world, exit_code).
  [[noreturn]] void Abort(const std::string& reason, int exit_code) override;

  // Debug aid (off by default; one host MPI_Alltoall per AllToAllV): CHECK that each peer sends
  // exactly what this rank expects to receive. Without it a mismatch silently leaves data
  // unreceived or hangs the group.
  void set_verify_counts(bool on) { verify_counts_ = on; }

 private:
  ncclComm_t InitGroup(MPI_Comm group, int rank, int size);
  void VerifyCounts(const std::vector<int64_t>& send_counts,
                    const std::vector<int64_t>& recv_counts, GroupKind g);
  // With the watchdog on: waits for the work just enqueued, through the watchdog (see the top).
  void AwaitCompletion(const char* op, GroupKind g);
  void CheckAsyncErrors() const;
  void AbortNcclComms();

  ProcessGroupLayout layout_;
  cudaStream_t stream_;
  MpiCommunicator* host_;  // not owned: the one this mirrors
  // Not owned: mpi's communicators, used for count verification and Abort.
  MPI_Comm mpi_world_ = MPI_COMM_NULL, mpi_expert_ = MPI_COMM_NULL, mpi_data_ = MPI_COMM_NULL;
  CollectiveWatchdog* watchdog_;  // the MpiCommunicator's
  cudaEvent_t done_event_ = nullptr;
  ncclComm_t world_ = nullptr, expert_ = nullptr, data_ = nullptr;
  int expert_rank_ = 0, expert_size_ = 1, data_rank_ = 0, data_size_ = 1;
  float* barrier_scratch_ = nullptr;  // one device float for Barrier
  bool verify_counts_ = false;
};

}  // namespace moe
