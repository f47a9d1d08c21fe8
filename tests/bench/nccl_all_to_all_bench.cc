// All-to-all bandwidth on device memory: NcclCommunicator::AllToAllV (equal counts) against a
// bare ncclGroupStart + ncclSend/ncclRecv loop of the same bytes on a separately created raw NCCL
// communicator over the same ranks, in the style of nccl-tests. Run under mpirun, one rank per
// GPU, e.g.
//   mpirun -np 8 nccl_all_to_all_bench --iters 20
// or, several ranks on one GPU (each rank posing as its own host, loopback sockets; testing):
//   mpirun -np 4 nccl_all_to_all_bench --allow_shared_gpu --iters 10
// Rank 0 prints one table; the conventions are printed above it. Without a GPU it prints
// "no GPU: skipped" and exits 0; built without CUDA it says so and exits 0.
#include <gflags/gflags.h>
#include <glog/logging.h>
#include <mpi.h>

#include <cstdint>
#include <cstdio>
#include <vector>

#include "comm/mpi_abort.h"
#include "comm/mpi_check.h"

#ifdef MOE_EP_HAS_CUDA
#include <cuda_runtime_api.h>
#include <nccl.h>

#include "comm/mpi_communicator.h"
#include "comm/nccl/nccl_check.h"
#include "comm/nccl/nccl_communicator.h"
#include "core/kernels/cuda/cuda_check.h"
#endif

DEFINE_int32(iters, 20, "timed iterations per size and per implementation");
DEFINE_int32(warmup, 5, "untimed iterations per size and per implementation, before timing");
DEFINE_int64(min_bytes, 4096, "smallest message size per peer, in bytes");
DEFINE_int64(max_bytes, 64 << 20, "largest message size per peer, in bytes (sizes double)");
DEFINE_int32(ep_size, 0, "expert-parallel size; the exchange runs on the expert group (0: world)");
DEFINE_bool(allow_shared_gpu, false,
            "testing: let several ranks share one GPU (each gets its own NCCL_HOSTID, traffic "
            "over loopback sockets); see BindDeviceForRank");

#ifdef MOE_EP_HAS_CUDA
namespace moe {
namespace {

// Device time of one call (cudaEvents around it on the stream), after an untimed MPI barrier so
// that every rank starts together; summed over the timed calls of this rank.
struct Timing {
  double sum = 0;  // seconds, this rank
};

template <typename Fn>
void TimeOnce(MPI_Comm c, cudaStream_t stream, cudaEvent_t start, cudaEvent_t stop, Timing* t,
              Fn fn) {
  MPI_CHECK(MPI_Barrier(c));
  CUDA_CHECK(cudaEventRecord(start, stream));
  fn();
  CUDA_CHECK(cudaEventRecord(stop, stream));
  CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  t->sum += ms * 1e-3;
}

// Max over ranks of this rank's mean time per call.
double MaxMean(const Timing& t, int iters, MPI_Comm c) {
  double mean = t.sum / iters, max = 0;
  MPI_CHECK(MPI_Allreduce(&mean, &max, 1, MPI_DOUBLE, MPI_MAX, c));
  return max;
}

int Run() {
  const DeviceBinding binding = BindDeviceForRank(MPI_COMM_WORLD, FLAGS_allow_shared_gpu);
  int world = 0;
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world));
  const int ep = FLAGS_ep_size > 0 ? FLAGS_ep_size : world;
  MpiCommunicator mpi(MPI_COMM_WORLD, ep);
  cudaStream_t stream = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  NcclCommunicator comm(mpi, stream);
  const GroupKind g = GroupKind::kExpert;
  const MPI_Comm c = mpi.comm(g);
  const int p = comm.Size(g), me = comm.Rank(g);
  const bool print = comm.Rank(GroupKind::kWorld) == 0;
  CHECK_GE(FLAGS_iters, 1);
  CHECK_GE(FLAGS_min_bytes, 4);

  // The bare baseline: its own NCCL communicator over the same ranks, unique id over MPI.
  ncclUniqueId id;
  if (me == 0) NCCL_CHECK(ncclGetUniqueId(&id));
  MPI_CHECK(MPI_Bcast(&id, static_cast<int>(sizeof(id)), MPI_BYTE, 0, c));
  ncclComm_t raw = nullptr;
  NCCL_CHECK(ncclCommInitRank(&raw, p, id, me));

  const int64_t max_n = FLAGS_max_bytes / static_cast<int64_t>(sizeof(float));
  float *send = nullptr, *recv[2] = {nullptr, nullptr};
  const size_t buffer_bytes = static_cast<size_t>(max_n) * p * sizeof(float);
  CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&send), buffer_bytes));
  for (float*& r : recv) CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&r), buffer_bytes));
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));

  if (print) {
    int version = 0;
    NCCL_CHECK(ncclGetVersion(&version));
    std::printf(
        "# NCCL all-to-all on the expert group: %d ranks per group, %d group(s), world %d, "
        "NCCL code %d%s\n"
        "# size    = bytes each rank sends to EACH peer (itself included), float32 elements\n"
        "# time    = per rank, the mean over %d timed calls of the device time between two\n"
        "#           cudaEvents around the call (each after an untimed MPI barrier, %d warm-up\n"
        "#           calls before); the table shows the max over all ranks, in us\n"
        "# algbw   = bytes sent per rank (size x %d) / time, GB/s (1e9 B/s); nccl-tests'\n"
        "#           busbw for all-to-all would be algbw x (P-1)/P = algbw x %.3f\n"
        "# ours    = NcclCommunicator::AllToAllV, equal counts\n"
        "# bare    = ncclGroupStart + ncclSend/ncclRecv per peer + ncclGroupEnd, own raw comm\n"
        "# rounds interleave the two, alternating which runs first; ratio is of times (ours/bare)\n"
        "# wrong   = received floats that differ from the expected ones (all outputs checked,\n"
        "#           receive buffers poisoned with NaN before each size)\n",
        p, world / p, world, version,
        binding.shared_gpu ? " (shared GPU: ranks pose as hosts, loopback sockets)" : "",
        FLAGS_iters, FLAGS_warmup, p, (p - 1.0) / p);
    std::printf("%10s %11s | %9s %7s | %9s %7s | %9s | %5s\n", "size(B)", "bytes/rank",
                "ours(us)", "algbw", "bare(us)", "algbw", "ours/bare", "wrong");
  }

  for (int64_t bytes = FLAGS_min_bytes; bytes <= FLAGS_max_bytes; bytes *= 2) {
    const int64_t n = bytes / static_cast<int64_t>(sizeof(float));
    std::vector<float> host(static_cast<size_t>(p) * n);
    for (int j = 0; j < p; ++j)
      for (int64_t i = 0; i < n; ++i) host[j * n + i] = static_cast<float>((me * p + j) * 1000 + i % 1000);
    CUDA_CHECK(cudaMemcpy(send, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice));
    for (float* r : recv) CUDA_CHECK(cudaMemset(r, 0xff, host.size() * sizeof(float)));  // NaN
    const std::vector<int64_t> counts(p, n);
    auto call = [&](int impl) {
      if (impl == 0) {
        comm.AllToAllV(send, counts, recv[0], counts, g);
      } else {
        NCCL_CHECK(ncclGroupStart());
        for (int peer = 0; peer < p; ++peer) {
          NCCL_CHECK(ncclSend(send + peer * n, n, ncclFloat, peer, raw, stream));
          NCCL_CHECK(ncclRecv(recv[1] + peer * n, n, ncclFloat, peer, raw, stream));
        }
        NCCL_CHECK(ncclGroupEnd());
      }
    };
    for (int i = 0; i < FLAGS_warmup; ++i)
      for (int impl = 0; impl < 2; ++impl) call(impl);
    CUDA_CHECK(cudaStreamSynchronize(stream));
    Timing t[2];
    for (int r = 0; r < FLAGS_iters; ++r)
      for (int k = 0; k < 2; ++k) {
        const int impl = (r + k) % 2;
        TimeOnce(c, stream, start, stop, &t[impl], [&] { call(impl); });
      }
    const double ours = MaxMean(t[0], FLAGS_iters, c), bare = MaxMean(t[1], FLAGS_iters, c);
    int64_t wrong = 0;
    std::vector<float> got(host.size());
    for (float* r : recv) {
      CUDA_CHECK(cudaMemcpy(got.data(), r, got.size() * sizeof(float), cudaMemcpyDeviceToHost));
      for (int s = 0; s < p; ++s)
        for (int64_t i = 0; i < n; ++i)
          wrong += !(got[s * n + i] == static_cast<float>((s * p + me) * 1000 + i % 1000));
    }
    int64_t wrong_all = 0;
    MPI_CHECK(MPI_Allreduce(&wrong, &wrong_all, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD));
    const double bytes_per_rank = static_cast<double>(bytes) * p;
    if (print)
      std::printf("%10lld %11.0f | %9.1f %7.3f | %9.1f %7.3f | %9.3f | %5lld\n",
                  static_cast<long long>(bytes), bytes_per_rank, ours * 1e6,
                  bytes_per_rank / ours / 1e9, bare * 1e6, bytes_per_rank / bare / 1e9,
                  ours / bare, static_cast<long long>(wrong_all));
    std::fflush(stdout);
  }

  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  CUDA_CHECK(cudaFree(send));
  for (float* r : recv) CUDA_CHECK(cudaFree(r));
  NCCL_CHECK(ncclCommDestroy(raw));
  return 0;  // comm (a user of the stream) is destroyed after this; the stream ends with the process
}

}  // namespace
}  // namespace moe
#endif  // MOE_EP_HAS_CUDA

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  google::InitGoogleLogging(argv[0]);
  FLAGS_logtostderr = true;
  moe::InstallMpiAbortOnFatal();
  int rank = 0;
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  int rc = 0;
#ifdef MOE_EP_HAS_CUDA
  int devices = 0;
  const cudaError_t st = cudaGetDeviceCount(&devices);
  if (st != cudaSuccess || devices == 0) {
    if (rank == 0)
      std::printf("no GPU: skipped (%s)\n",
                  st != cudaSuccess ? cudaGetErrorString(st) : "0 CUDA devices");
  } else {
    rc = moe::Run();
  }
#else
  if (rank == 0) std::printf("built without CUDA: skipped\n");
#endif
  MPI_Finalize();
  return rc;
}
