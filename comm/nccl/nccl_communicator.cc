#include "comm/nccl/nccl_communicator.h"

#include <glog/logging.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "comm/mpi_check.h"
#include "comm/nccl/nccl_check.h"
#include "core/kernels/cuda/cuda_check.h"

namespace moe {
namespace {

// Exclusive prefix sums, with a check that no count is negative.
std::vector<int64_t> Displacements(const std::vector<int64_t>& counts, const char* what,
                                   GroupKind g) {
  std::vector<int64_t> displs(counts.size());
  int64_t offset = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    CHECK_GE(counts[i], 0) << GroupName(g) << " NCCL all-to-all-v: " << what << "[" << i
                           << "] is negative";
    displs[i] = offset;
    offset += counts[i];
  }
  return displs;
}

void SetEnvOrDie(const char* name, const std::string& value) {
  CHECK_EQ(setenv(name, value.c_str(), /*overwrite=*/1), 0) << "setenv " << name;
}

}  // namespace

DeviceBinding BindDeviceForRank(const MPI_Comm& world, bool allow_shared_gpu) {
  int world_rank = 0;
  MPI_CHECK(MPI_Comm_rank(world, &world_rank));
  MPI_Comm local = MPI_COMM_NULL;
  MPI_CHECK(MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, world_rank, MPI_INFO_NULL, &local));
  DeviceBinding b;
  MPI_CHECK(MPI_Comm_rank(local, &b.local_rank));
  MPI_CHECK(MPI_Comm_size(local, &b.local_size));
  MPI_CHECK(MPI_Comm_free(&local));

  int device_count = 0;
  const cudaError_t st = cudaGetDeviceCount(&device_count);
  if (st != cudaSuccess || device_count == 0)
    LOG(FATAL) << "rank " << world_rank << ": the NCCL path needs a GPU, but "
               << (st != cudaSuccess ? std::string("cudaGetDeviceCount failed: ") +
                                           cudaGetErrorName(st) + " (" + cudaGetErrorString(st) +
                                           ")"
                                     : std::string("cudaGetDeviceCount reports 0 devices"));
  b.shared_gpu = b.local_size > device_count;
  if (b.shared_gpu && !allow_shared_gpu)
    LOG(FATAL) << "rank " << world_rank << ": " << b.local_size << " ranks run on this host but it"
               << " has only " << device_count << " GPU(s); the NCCL path wants one rank per GPU"
               << " (NCCL refuses two ranks on one device: 'Duplicate GPU detected'). Start at"
               << " most " << device_count << " ranks per host, or, for testing only, pass"
               << " --allow_shared_gpu to give each rank its own NCCL host id on one GPU";
  if (b.shared_gpu) {
    // NCCL hashes NCCL_HOSTID (instead of the host name) into the host hash it compares, once
    // per process: this must happen before any NCCL call. See the header for the whole story.
    SetEnvOrDie("NCCL_HOSTID", "moe-ep-rank" + std::to_string(world_rank));
    SetEnvOrDie("NCCL_P2P_DISABLE", "1");
    SetEnvOrDie("NCCL_SHM_DISABLE", "1");
    SetEnvOrDie("NCCL_IB_DISABLE", "1");
    SetEnvOrDie("NCCL_SOCKET_IFNAME", "lo");
    if (world_rank == 0)
      LOG(WARNING) << b.local_size << " ranks share " << device_count
                   << " GPU(s) (--allow_shared_gpu): each rank gets NCCL_HOSTID=moe-ep-rank<r>,"
                   << " NCCL traffic goes over loopback sockets; for testing, not for speed";
  }
  b.device = b.local_rank % device_count;
  CUDA_CHECK(cudaSetDevice(b.device));
  return b;
}

NcclCommunicator::NcclCommunicator(MpiCommunicator& mpi, cudaStream_t stream)
    : layout_(mpi.layout()),
      stream_(stream),
      host_(&mpi),
      mpi_world_(mpi.comm(GroupKind::kWorld)),
      mpi_expert_(mpi.comm(GroupKind::kExpert)),
      mpi_data_(mpi.comm(GroupKind::kData)),
      watchdog_(&mpi.watchdog()),
      expert_rank_(mpi.Rank(GroupKind::kExpert)),
      expert_size_(mpi.Size(GroupKind::kExpert)),
      data_rank_(mpi.Rank(GroupKind::kData)),
      data_size_(mpi.Size(GroupKind::kData)) {
  // The same order on every rank: each init blocks until its whole group has joined.
  world_ = InitGroup(mpi_world_, layout_.world_rank, layout_.world_size);
  expert_ = InitGroup(mpi_expert_, expert_rank_, expert_size_);
  data_ = InitGroup(mpi_data_, data_rank_, data_size_);
  CUDA_CHECK(cudaEventCreateWithFlags(&done_event_, cudaEventDisableTiming));
  CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&barrier_scratch_), sizeof(float)));
  CUDA_CHECK(cudaMemsetAsync(barrier_scratch_, 0, sizeof(float), stream_));
}

ncclComm_t NcclCommunicator::InitGroup(MPI_Comm group, int rank, int size) {
  ncclUniqueId id;
  if (rank == 0) NCCL_CHECK(ncclGetUniqueId(&id));
  MPI_CHECK(MPI_Bcast(&id, static_cast<int>(sizeof(id)), MPI_BYTE, 0, group));
  ncclComm_t comm = nullptr;
  NCCL_CHECK(ncclCommInitRank(&comm, size, id, rank));
  // NCCL and MPI must agree: models index experts by these ranks.
  int nccl_rank = -1, nccl_size = -1;
  NCCL_CHECK(ncclCommUserRank(comm, &nccl_rank));
  NCCL_CHECK(ncclCommCount(comm, &nccl_size));
  CHECK_EQ(nccl_rank, rank);
  CHECK_EQ(nccl_size, size);
  return comm;
}

NcclCommunicator::~NcclCommunicator() {
  for (ncclComm_t* c : {&data_, &expert_, &world_})
    if (*c != nullptr) {
      NCCL_CHECK(ncclCommDestroy(*c));
      *c = nullptr;
    }
  if (barrier_scratch_ != nullptr) CUDA_CHECK(cudaFree(barrier_scratch_));
  if (done_event_ != nullptr) CUDA_CHECK(cudaEventDestroy(done_event_));
}

ncclComm_t NcclCommunicator::nccl_comm(GroupKind g) const {
  switch (g) {
    case GroupKind::kWorld: return world_;
    case GroupKind::kExpert: return expert_;
    case GroupKind::kData: return data_;
  }
  LOG(FATAL) << "unknown GroupKind " << static_cast<int>(g);
  return nullptr;
}

int NcclCommunicator::Rank(GroupKind g) const { return GroupRank(layout_, g); }

int NcclCommunicator::Size(GroupKind g) const { return GroupSize(layout_, g); }

void NcclCommunicator::VerifyCounts(const std::vector<int64_t>& send_counts,
                                    const std::vector<int64_t>& recv_counts, GroupKind g) {
  const int p = Size(g);
  const MPI_Comm c = g == GroupKind::kWorld ? mpi_world_
                     : g == GroupKind::kExpert ? mpi_expert_
                                               : mpi_data_;
  std::vector<int64_t> announced(p);
  MPI_CHECK(MPI_Alltoall(send_counts.data(), 1, MPI_INT64_T, announced.data(), 1, MPI_INT64_T, c));
  for (int peer = 0; peer < p; ++peer)
    CHECK_EQ(announced[peer], recv_counts[peer])
        << GroupName(g) << " NCCL all-to-all-v: " << GroupName(g) << " rank " << peer
        << " sends " << announced[peer] << " floats to " << GroupName(g) << " rank " << Rank(g)
        << ", which expects " << recv_counts[peer];
}

void NcclCommunicator::AllToAllV(const float* send, const std::vector<int64_t>& send_counts,
                                 float* recv, const std::vector<int64_t>& recv_counts,
                                 GroupKind g) {
  const int p = Size(g);
  const int me = Rank(g);
  CHECK_EQ(static_cast<int>(send_counts.size()), p)
      << GroupName(g) << " NCCL all-to-all-v: send_counts needs one entry per rank of the group";
  CHECK_EQ(static_cast<int>(recv_counts.size()), p)
      << GroupName(g) << " NCCL all-to-all-v: recv_counts needs one entry per rank of the group";
  CHECK_EQ(send_counts[me], recv_counts[me])
      << GroupName(g) << " NCCL all-to-all-v: rank " << me << " sends itself " << send_counts[me]
      << " floats but expects to receive " << recv_counts[me];
  const std::vector<int64_t> send_displs = Displacements(send_counts, "send_counts", g);
  const std::vector<int64_t> recv_displs = Displacements(recv_counts, "recv_counts", g);
  if (verify_counts_) VerifyCounts(send_counts, recv_counts, g);

  ncclComm_t comm = nccl_comm(g);
  NCCL_CHECK(ncclGroupStart());
  for (int peer = 0; peer < p; ++peer) {
    if (send_counts[peer] > 0)
      NCCL_CHECK(ncclSend(send + send_displs[peer], static_cast<size_t>(send_counts[peer]),
                          ncclFloat, peer, comm, stream_));
    if (recv_counts[peer] > 0)
      NCCL_CHECK(ncclRecv(recv + recv_displs[peer], static_cast<size_t>(recv_counts[peer]),
                          ncclFloat, peer, comm, stream_));
  }
  NCCL_CHECK(ncclGroupEnd());
  AwaitCompletion("all-to-all-v", g);
}

void NcclCommunicator::AllToAllInt64(const int64_t* send, int64_t* recv, int64_t count_per_peer,
                                     GroupKind g) {
  CHECK_GE(count_per_peer, 0) << GroupName(g) << " NCCL all-to-all (int64): negative count";
  if (count_per_peer == 0) return;
  const int p = Size(g);
  const size_t n = static_cast<size_t>(count_per_peer);
  ncclComm_t comm = nccl_comm(g);
  NCCL_CHECK(ncclGroupStart());
  for (int peer = 0; peer < p; ++peer) {
    NCCL_CHECK(ncclSend(send + peer * n, n, ncclInt64, peer, comm, stream_));
    NCCL_CHECK(ncclRecv(recv + peer * n, n, ncclInt64, peer, comm, stream_));
  }
  NCCL_CHECK(ncclGroupEnd());
  AwaitCompletion("all-to-all of counts", g);
}

void NcclCommunicator::AllReduceSum(float* data, int64_t count, GroupKind g) {
  CHECK_GE(count, 0);
  if (count == 0) return;
  NCCL_CHECK(ncclAllReduce(data, data, static_cast<size_t>(count), ncclFloat, ncclSum,
                           nccl_comm(g), stream_));
  AwaitCompletion("all-reduce (sum)", g);
}

void NcclCommunicator::AllReduceSum(double* data, int64_t count, GroupKind g) {
  CHECK_GE(count, 0);
  if (count == 0) return;
  NCCL_CHECK(ncclAllReduce(data, data, static_cast<size_t>(count), ncclDouble, ncclSum,
                           nccl_comm(g), stream_));
  AwaitCompletion("all-reduce (sum)", g);
}

void NcclCommunicator::AllReduceMax(double* data, int64_t count, GroupKind g) {
  CHECK_GE(count, 0);
  if (count == 0) return;
  NCCL_CHECK(ncclAllReduce(data, data, static_cast<size_t>(count), ncclDouble, ncclMax,
                           nccl_comm(g), stream_));
  AwaitCompletion("all-reduce (max)", g);
}

void NcclCommunicator::AllReduceMin(double* data, int64_t count, GroupKind g) {
  CHECK_GE(count, 0);
  if (count == 0) return;
  NCCL_CHECK(ncclAllReduce(data, data, static_cast<size_t>(count), ncclDouble, ncclMin,
                           nccl_comm(g), stream_));
  AwaitCompletion("all-reduce (min)", g);
}

void NcclCommunicator::Broadcast(float* data, int64_t count, int root, GroupKind g) {
  CHECK(root >= 0 && root < Size(g)) << GroupName(g) << " NCCL broadcast: root " << root
                                     << " is not a rank of a group of " << Size(g);
  CHECK_GE(count, 0);
  if (count == 0) return;
  NCCL_CHECK(ncclBroadcast(data, data, static_cast<size_t>(count), ncclFloat, root, nccl_comm(g),
                           stream_));
  AwaitCompletion("broadcast", g);
}

void NcclCommunicator::Barrier(GroupKind g) {
  NCCL_CHECK(ncclAllReduce(barrier_scratch_, barrier_scratch_, 1, ncclFloat, ncclSum,
                           nccl_comm(g), stream_));
  if (watchdog_->timeout() > 0) AwaitCompletion("barrier", g);
  else CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void NcclCommunicator::AwaitCompletion(const char* op, GroupKind g) {
  if (watchdog_->timeout() <= 0) return;  // no watchdog: stay asynchronous
  CUDA_CHECK(cudaEventRecord(done_event_, stream_));
  watchdog_->Wait(
      [this] {
        const cudaError_t e = cudaEventQuery(done_event_);
        if (e == cudaSuccess) return true;
        if (e != cudaErrorNotReady) CUDA_CHECK(e);
        CheckAsyncErrors();
        return false;
      },
      std::string("NCCL ") + op + " on the " + GroupName(g) + " group (" +
          std::to_string(Size(g)) + " ranks)",
      [this] { AbortNcclComms(); });
}

void NcclCommunicator::CheckAsyncErrors() const {
  for (ncclComm_t c : {world_, expert_, data_}) {
    ncclResult_t async = ncclSuccess;
    NCCL_CHECK(ncclCommGetAsyncError(c, &async));
    CHECK(async == ncclSuccess || async == ncclInProgress)
        << "NCCL reported an asynchronous error while waiting: " << ncclGetErrorString(async)
        << " (" << ncclGetLastError(c) << ")";
  }
}

void NcclCommunicator::AbortNcclComms() {
  // No NCCL_CHECK: we are ending anyway, and aborting unblocks kernels waiting on absent peers.
  for (ncclComm_t* c : {&data_, &expert_, &world_})
    if (*c != nullptr) {
      ncclCommAbort(*c);
      *c = nullptr;
    }
}

void NcclCommunicator::Abort(const std::string& reason, int exit_code) {
  LOG(ERROR) << "rank " << layout_.world_rank << " of " << layout_.world_size
             << ": ending the job: " << reason;
  google::FlushLogFiles(google::GLOG_INFO);
  std::fflush(stdout);
  std::fflush(stderr);
  AbortNcclComms();
  MPI_Abort(mpi_world_, exit_code);
  std::abort();  // MPI_Abort does not return; this only satisfies [[noreturn]].
}

}  // namespace moe
