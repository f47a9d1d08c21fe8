// moe_comm_bench: a sweep of the MoE layer's all-to-all exchange, in the spirit of nccl-tests, on
// real MoeLayers (launcher/comm_sweep_measure.h). Run under mpirun, e.g.
//
//   mpirun -np 4 --oversubscribe build/launcher/moe_comm_bench --csv=sweep.csv
//
// Rank 0 prints one row per point: the sweep parameters, the bytes one rank sends per exchange,
// the time per exchange (mean over ranks, iterations and the four exchanges of a
// forward+backward) and its split into skew (waiting for the EP group's last rank; clocks aligned
// once at start-up, comm/clock_sync.h) and transfer (the rest), algbw = bytes / time and
// busbw = algbw * (ep - 1) / ep (nccl-tests' all-to-all convention), and the exchanges' share of
// the layer's forward+backward. --csv writes the same rows (launcher/comm_sweep_csv.h) for
// plot_comm_sweep.py and moe_comm_model.
//
// --device=cuda builds each point's layer on the GPU over NCCL (one GPU per rank; tests may share
// one with --allow_shared_gpu); dispatchers the CUDA path lacks are skipped with a note.
#include <gflags/gflags.h>
#include <glog/logging.h>
#include <mpi.h>

#include <cstdio>
#include <string>
#include <vector>

#include "comm/clock_sync.h"
#include "comm/mpi_abort.h"
#include "comm/mpi_check.h"
#include "core/backend.h"
#include "core/gemm.h"
#include "launcher/comm_sweep_measure.h"
#include "launcher/device_comm.h"
#include "launcher/exit_codes.h"
#include "launcher/output_files.h"
#include "models/moe/moe_backend.h"

DEFINE_string(dispatchers, "flat", "dispatchers: flat,hierarchical,pipelined");
DEFINE_string(tokens, "256,1024,4096", "tokens per rank per step");
DEFINE_string(dims, "64,256", "model widths D");
DEFINE_string(experts, "8", "expert counts E");
DEFINE_string(top_k, "2", "experts per token k");
DEFINE_string(capacity, "1.25", "capacity factors");
DEFINE_string(ep, "2,4", "expert-parallel group sizes (each must divide the world size)");
DEFINE_int32(hidden_ratio, 2, "expert hidden width H = ratio * D");
DEFINE_int64(group_tokens, 256, "tokens per routing group (at most the point's tokens)");
DEFINE_int32(ranks_per_node, 0, "ranks per node: 0 = the machine's nodes; > 0 simulated nodes");
DEFINE_int32(pipeline_chunks, 2, "chunks of the pipelined dispatcher");
DEFINE_int32(warmup, 2, "untimed steps per point");
DEFINE_int32(iters, 8, "timed steps per point");
DEFINE_string(csv, "", "also write the rows to this CSV file (rank 0)");
DEFINE_string(device, "cpu", "where the layers run: cpu (MPI) or cuda (GPU, NCCL)");
DEFINE_bool(allow_shared_gpu, false, "--device=cuda: let ranks share a GPU (testing only)");

namespace moe {
namespace {

[[noreturn]] void ConfigError(int rank, const std::string& what) {
  if (rank == 0) fprintf(stderr, "config error: %s\n", what.c_str());
  MPI_CHECK(MPI_Finalize());
  exit(kExitConfig);
}

// The flags as sweep lists; every rank parses the same flags, so all agree on an error.
SweepLists ParseFlags(int rank, int world) {
  SweepLists l;
  std::string err;
  std::vector<int64_t> ints;
  if (!ParseDispatcherList("dispatchers", FLAGS_dispatchers, &l.dispatchers, &err) ||
      !ParseIntList("tokens", FLAGS_tokens, &l.tokens, &err) ||
      !ParseIntList("dims", FLAGS_dims, &l.dims, &err) ||
      !ParseIntList("experts", FLAGS_experts, &l.experts, &err) ||
      !ParseIntList("top_k", FLAGS_top_k, &l.top_k, &err) ||
      !ParseRealList("capacity", FLAGS_capacity, &l.capacity, &err) ||
      !ParseIntList("ep", FLAGS_ep, &l.ep, &err))
    ConfigError(rank, err);
  auto positive = [&](const char* flag, int64_t v) {
    if (v < 1) ConfigError(rank, "--" + std::string(flag) + "=" + std::to_string(v) +
                                     ": must be >= 1");
  };
  positive("hidden_ratio", FLAGS_hidden_ratio);
  positive("group_tokens", FLAGS_group_tokens);
  positive("iters", FLAGS_iters);
  positive("pipeline_chunks", FLAGS_pipeline_chunks);
  if (FLAGS_warmup < 0) ConfigError(rank, "--warmup=" + std::to_string(FLAGS_warmup) +
                                              ": must be >= 0");
  if (FLAGS_ranks_per_node < 0 || (FLAGS_ranks_per_node > 0 && world % FLAGS_ranks_per_node))
    ConfigError(rank, "--ranks_per_node=" + std::to_string(FLAGS_ranks_per_node) +
                          ": must be 0 or divide the " + std::to_string(world) + " ranks");
  if (FLAGS_device != "cpu" && FLAGS_device != "cuda")
    ConfigError(rank, "--device=" + FLAGS_device + ": must be cpu or cuda");
  if (FLAGS_device == "cuda" && !BackendAvailable(Device::kCUDA))
    ConfigError(rank, "--device=cuda: this build has no CUDA path (configured with "
                      "MOE_EP_WITH_CUDA=OFF or without nvcc); use --device=cpu or rebuild");
  l.hidden_ratio = FLAGS_hidden_ratio;
  l.group_tokens = FLAGS_group_tokens;
  return l;
}

// The dispatchers this build can make on `device`; a note for each it refuses.
std::vector<DispatcherKind> AvailableDispatchers(const std::vector<DispatcherKind>& wanted,
                                                 Device device, int rank) {
  std::vector<DispatcherKind> out;
  for (DispatcherKind d : wanted) {
    const bool available =
        device == Device::kCUDA ? CudaDispatcherAvailable(d) : HostDispatcherAvailable(d);
    if (available) {
      out.push_back(d);
    } else if (rank == 0) {
      printf("# note: dispatcher %s is not available in this build on the %s path; skipped\n",
             DispatcherKindName(d), device == Device::kCUDA ? "CUDA" : "host");
    }
  }
  return out;
}

void PrintHeader(int world, const NodeLayout& layout) {
  printf("# moe_comm_bench: %d ranks, %d node(s) x %d ranks%s, device %s; %d warm-up + %d timed "
         "forward+backward steps per point\n",
         world, layout.nodes, layout.ranks_per_node, layout.uneven ? " (uneven nodes: min)" : "",
         FLAGS_device.c_str(), FLAGS_warmup, FLAGS_iters);
  printf("# bytes: sent by one rank per exchange (own block included); time: per exchange, mean "
         "over ranks, steps and the 4 exchanges; GB/s = 1e9 B/s; busbw = algbw*(ep-1)/ep\n");
  printf("# skew: waiting for the EP group's last rank to arrive; xfer: the rest (time = skew + "
         "xfer)\n");
  printf("%-12s %6s %5s %5s %3s %2s %5s %3s %4s %5s | %11s %11s %10s %10s %8s %8s | %9s %9s "
         "%6s\n",
         "dispatcher", "tokens", "D", "H", "E", "k", "cf", "ep", "rpn", "nodes", "bytes",
         "time_us", "skew_us", "xfer_us", "algbw", "busbw", "a2a_ms", "layer_ms", "share");
}

void PrintRow(const SweepRow& r) {
  printf("%-12s %6lld %5d %5d %3d %2d %5.2f %3d %4d %5d | %11lld %11.1f %10.1f %10.1f %8.3f "
         "%8.3f | %9.3f %9.3f %5.1f%%\n",
         r.dispatcher.c_str(), static_cast<long long>(r.tokens), r.dim, r.hidden, r.experts,
         r.top_k, r.capacity, r.ep, r.ranks_per_node, r.nodes, static_cast<long long>(r.bytes),
         r.exchange_us, r.skew_us, r.transfer_us, r.algbw_gbs, r.busbw_gbs, r.a2a_ms, r.layer_ms,
         100 * r.share);
  fflush(stdout);
}

// Rewrites the whole CSV after each point, so an interrupted sweep keeps what it measured.
void WriteCsv(const std::vector<SweepRow>& rows, int rank, MPI_Comm world) {
  int ok = 1;
  std::string err;
  if (rank == 0 && !FLAGS_csv.empty() && !WriteSweepCsv(FLAGS_csv, rows, &err)) {
    fprintf(stderr, "output error: --csv=%s: %s\n", FLAGS_csv.c_str(), err.c_str());
    ok = 0;
  }
  MPI_CHECK(MPI_Bcast(&ok, 1, MPI_INT, 0, world));
  if (!ok) {
    MPI_CHECK(MPI_Finalize());
    exit(kExitOutput);
  }
}

int Run(int rank, int world) {
  SweepLists lists = ParseFlags(rank, world);
  std::string err;
  int ok = 1;
  if (rank == 0 && !FLAGS_csv.empty() && !CheckOutputFile("csv", FLAGS_csv, &err)) ok = 0;
  MPI_CHECK(MPI_Bcast(&ok, 1, MPI_INT, 0, MPI_COMM_WORLD));
  // Rank 0 alone checked the path; its message already reads "config error: --csv=...".
  if (!ok) ConfigError(rank, rank == 0 ? err.substr(std::string("config error: ").size()) : "");
  const Device device = FLAGS_device == "cuda" ? Device::kCUDA : Device::kCPU;
  if (device == Device::kCUDA) BindRankToGpu(FLAGS_allow_shared_gpu);  // before any CUDA call
  lists.dispatchers = AvailableDispatchers(lists.dispatchers, device, rank);
  const NodeLayout layout = DetectNodeLayout(MPI_COMM_WORLD, FLAGS_ranks_per_node);
  std::vector<std::string> skipped;
  const std::vector<SweepPoint> points = ExpandSweep(lists, world, &skipped);
  const HostCrowding crowding = MostCrowdedHost(MPI_COMM_WORLD);
  if (rank == 0) {
    for (const std::string& s : skipped) printf("# %s\n", s.c_str());
    if (crowding.ranks > crowding.cores)
      printf("# note: %d ranks share %d cores on one host: they take turns on the cores inside "
             "every exchange, so skew and transfer include that wait, not only the link\n",
             crowding.ranks, crowding.cores);
    PrintHeader(world, layout);
  }
  MeasureOptions opt;
  opt.warmup = FLAGS_warmup;
  opt.iters = FLAGS_iters;
  opt.ranks_per_node = FLAGS_ranks_per_node;
  opt.pipeline_chunks = FLAGS_pipeline_chunks;
  opt.device = device;
  opt.clock = SyncClockToRoot(MPI_COMM_WORLD);
  std::vector<SweepRow> rows;
  for (const SweepPoint& p : points) {
    rows.push_back(MeasurePoint(p, layout, opt));
    if (rank == 0) PrintRow(rows.back());
    WriteCsv(rows, rank, MPI_COMM_WORLD);
  }
  return kExitOk;
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  gflags::SetUsageMessage("moe_comm_bench [flags] (under mpirun): the MoE exchange, swept");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  google::InitGoogleLogging(argv[0]);
  FLAGS_logtostderr = true;
  MPI_CHECK(MPI_Init(&argc, &argv));
  moe::InstallMpiAbortOnFatal();
  int rank = 0, world = 1;
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world));
  const moe::BlasThreadChoice blas = moe::SetBlasThreadsFromEnv();
  if (blas.threads == 0) moe::ConfigError(rank, blas.error);
  LOG_IF(INFO, rank == 0) << "BLAS threads per rank: " << blas.threads << " (" << blas.source
                          << ")";
  LOG_IF(INFO, rank == 0) << "BLAS kernels: " << moe::BlasCoreNote();
  const int rc = moe::Run(rank, world);
  MPI_CHECK(MPI_Finalize());
  return rc;
}
