// All-to-all bandwidth: MpiCommunicator::AllToAllV (equal counts; both of its algorithms) against
// a raw MPI_Alltoall of the same bytes on the same communicator, in the style of nccl-tests. Run under mpirun, e.g.
//   mpirun -np 4 --oversubscribe --bind-to none all_to_all_bench --iters 20 --max_bytes 4194304
// Rank 0 prints one table; the conventions are printed above it.
#include <gflags/gflags.h>
#include <glog/logging.h>
#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "comm/mpi_abort.h"
#include "comm/mpi_check.h"
#include "comm/mpi_communicator.h"

DEFINE_int32(iters, 20, "timed iterations per size and per implementation");
DEFINE_int32(warmup, 5, "untimed iterations per size and per implementation, before timing");
DEFINE_int64(min_bytes, 4096, "smallest message size per peer, in bytes");
DEFINE_int64(max_bytes, 4 << 20, "largest message size per peer, in bytes (sizes double)");
DEFINE_int32(ep_size, 0, "expert-parallel size; the exchange runs on the expert group (0: world)");

namespace moe {
namespace {

struct Timing {
  double sum = 0;  // seconds, this rank
};

// One call, preceded by an untimed barrier so every rank starts together.
template <typename Fn>
void TimeOnce(MPI_Comm c, Timing* t, Fn fn) {
  MPI_CHECK(MPI_Barrier(c));
  const double t0 = MPI_Wtime();
  fn();
  t->sum += MPI_Wtime() - t0;
}

// Max over ranks of this rank's mean time per call.
double MaxMean(const Timing& t, int iters, MPI_Comm c) {
  double mean = t.sum / iters, max = 0;
  MPI_CHECK(MPI_Allreduce(&mean, &max, 1, MPI_DOUBLE, MPI_MAX, c));
  return max;
}

int Run() {
  int world = 0;
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world));
  const int ep = FLAGS_ep_size > 0 ? FLAGS_ep_size : world;
  MpiCommunicator comm(MPI_COMM_WORLD, ep);
  const GroupKind g = GroupKind::kExpert;
  const MPI_Comm c = comm.comm(g);
  const int p = comm.Size(g), me = comm.Rank(g);
  const bool print = comm.Rank(GroupKind::kWorld) == 0;
  CHECK_GE(FLAGS_iters, 1);
  CHECK_GE(FLAGS_min_bytes, 4);

  if (print) {
    std::printf(
        "# all-to-all on the expert group: %d ranks per group, %d group(s), world %d\n"
        "# size    = bytes each rank sends to EACH peer (itself included), float32 elements\n"
        "# time    = per rank, the mean over %d timed calls (each after an untimed barrier,\n"
        "#           %d warm-up calls before); the table shows the max over all ranks, in us\n"
        "# algbw   = bytes sent per rank (size x %d) / time, GB/s (1e9 B/s); nccl-tests'\n"
        "#           busbw for all-to-all would be algbw x (P-1)/P = algbw x %.3f\n"
        "# ours    = MpiCommunicator::AllToAllV, equal counts, default algorithm (kPairwise:\n"
        "#           Isend/Irecv per peer, finished through the collective watchdog)\n"
        "# a2av    = the same with AllToAllAlgorithm::kAlltoallv (MPI_Ialltoallv)\n"
        "# raw     = MPI_Alltoall(MPI_FLOAT) of the same bytes on the same communicator\n"
        "# rounds interleave the three, rotating which runs first; ratios are of times (x/raw)\n"
        "# wrong   = received floats that differ from the expected ones (all outputs checked)\n",
        p, world / p, world, FLAGS_iters, FLAGS_warmup, p, (p - 1.0) / p);
    std::printf("%10s %10s | %9s %7s | %9s %7s | %9s %7s | %8s %8s | %5s\n", "size(B)",
                "bytes/rank", "ours(us)", "algbw", "a2av(us)", "algbw", "raw(us)", "algbw",
                "ours/raw", "a2av/raw", "wrong");
  }

  MpiCommunicator alltoallv(MPI_COMM_WORLD, ep);
  alltoallv.set_all_to_all_algorithm(AllToAllAlgorithm::kAlltoallv);
  for (int64_t bytes = FLAGS_min_bytes; bytes <= FLAGS_max_bytes; bytes *= 2) {
    const int64_t n = bytes / static_cast<int64_t>(sizeof(float));
    std::vector<float> send(p * n);
    for (int j = 0; j < p; ++j)
      for (int64_t i = 0; i < n; ++i) send[j * n + i] = static_cast<float>((me * p + j) * 1000 + i % 1000);
    const std::vector<int64_t> counts(p, n);
    constexpr int kImpls = 3;  // ours, MPI_Ialltoallv, raw
    std::vector<std::vector<float>> recv(kImpls, std::vector<float>(p * n, -1.0f));
    auto call = [&](int impl) {
      if (impl == 0) comm.AllToAllV(send.data(), counts, recv[0].data(), counts, g);
      if (impl == 1) alltoallv.AllToAllV(send.data(), counts, recv[1].data(), counts, g);
      if (impl == 2)
        MPI_CHECK(MPI_Alltoall(send.data(), static_cast<int>(n), MPI_FLOAT, recv[2].data(),
                               static_cast<int>(n), MPI_FLOAT, c));
    };
    for (int i = 0; i < FLAGS_warmup; ++i)
      for (int impl = 0; impl < kImpls; ++impl) call(impl);
    Timing t[kImpls];
    for (int r = 0; r < FLAGS_iters; ++r)
      for (int k = 0; k < kImpls; ++k) {
        const int impl = (r + k) % kImpls;
        TimeOnce(c, &t[impl], [&] { call(impl); });
      }
    double sec[kImpls];
    for (int impl = 0; impl < kImpls; ++impl) sec[impl] = MaxMean(t[impl], FLAGS_iters, c);
    int64_t wrong = 0;
    for (int j = 0; j < p; ++j)
      for (int64_t i = 0; i < n; ++i) {
        const float want = static_cast<float>((j * p + me) * 1000 + i % 1000);
        for (int impl = 0; impl < kImpls; ++impl) wrong += recv[impl][j * n + i] != want;
      }
    int64_t wrong_all = 0;
    MPI_CHECK(MPI_Allreduce(&wrong, &wrong_all, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD));
    const double bytes_per_rank = static_cast<double>(bytes) * p;
    if (print)
      std::printf("%10lld %10.0f | %9.1f %7.3f | %9.1f %7.3f | %9.1f %7.3f | %8.2f %8.2f | %5lld\n",
                  static_cast<long long>(bytes), bytes_per_rank, sec[0] * 1e6,
                  bytes_per_rank / sec[0] / 1e9, sec[1] * 1e6, bytes_per_rank / sec[1] / 1e9,
                  sec[2] * 1e6, bytes_per_rank / sec[2] / 1e9, sec[0] / sec[2], sec[1] / sec[2],
                  static_cast<long long>(wrong_all));
  }
  return 0;
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  google::InitGoogleLogging(argv[0]);
  FLAGS_logtostderr = true;
  moe::InstallMpiAbortOnFatal();
  const int rc = moe::Run();
  MPI_Finalize();
  return rc;
}
