// MoE layer benchmark: forward + backward per phase for a few (E, capacity factor) points on the
// EP group given by mpirun (-np P => EP = P), and the expert GEMMs against raw cblas_sgemm calls of
// exactly the same shapes, timed in the same run (ratios, because this machine is noisy).
//
//   mpirun -np 4 --oversubscribe build/tests/moe_layer_bench
//
// The router against the experts as E grows, at vmoe_tiny's shapes (one MoE layer of it: 32
// images of 16 tokens per rank, groups of 8 images, noisy top-2 with BPR, importance + load loss):
//
//   build/tests/moe_layer_bench --tokens_per_rank=512 --group_tokens=128 --dim=64 --hidden=128 \
//       --experts=8,32,128 --capacity_factors=1.05 --bpr --iters=200 --warmup=20
//
// prints, after the phase table, one line per (E, cf): router forward ms, expert forward ms, their
// ratio, and the layer's forward+backward tokens/s, all from the same iterations.
//
// Conventions: times are milliseconds per forward+backward iteration, mean over --iters after
// --warmup, and the max over ranks (the slowest rank sets the step time). "experts/sgemm" is the
// expert phase (GEMMs + bias + GELU) over the bare GEMMs it performs, each expert's on its own
// operands (see RawExpertOperands).
#include <gflags/gflags.h>
#include <glog/logging.h>
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <sstream>

#include "comm/mpi_communicator.h"
#include "core/gemm.h"
#include "core/host_memory.h"
#include "core/profiler.h"
#include "core/rng.h"
#include "models/moe/capacity.h"
#include "models/moe/moe_layer.h"

DEFINE_int32(tokens_per_rank, 2048, "tokens each rank routes per iteration");
DEFINE_int32(group_tokens, 512, "tokens per routing group");
DEFINE_int32(dim, 256, "model width D");
DEFINE_int32(hidden, 512, "expert hidden width H");
DEFINE_int32(top_k, 2, "experts per token");
DEFINE_string(experts, "8,16", "comma-separated expert counts");
DEFINE_string(capacity_factors, "1.0,1.25,2.0", "comma-separated capacity factors");
DEFINE_int32(iters, 10, "timed iterations");
DEFINE_int32(warmup, 2, "untimed iterations");
DEFINE_double(noise_scale, 1.0, "router noise std * E (0: no noise)");
DEFINE_double(importance_weight, 0.005, "importance loss weight");
DEFINE_double(load_weight, 0.005, "load loss weight (needs noise)");
DEFINE_bool(bpr, false, "Batch Prioritized Routing");
DEFINE_bool(keep_host_memory, true,
            "keep freed host memory in the process, as moe_train does (core/host_memory.h); "
            "false: glibc's defaults, every step's large buffers fresh pages from the kernel");

namespace moe {
namespace {

std::vector<double> ParseList(const std::string& s) {
  std::vector<double> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) v.push_back(std::stod(item));
  return v;
}

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double MaxOverRanks(double v) {
  double out = v;
  MPI_Allreduce(&v, &out, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return out;
}

// Operands of the bare GEMMs an ExpertBank performs for `rows` rows per local expert. Each
// expert has its own weights, gradients and rows, as in the layer: the GEMMs then read as much
// distinct memory as the expert phase does. (With one expert's buffers reused for all, the
// operands stay in cache and the reference is faster than any layer could be: `hot` below.)
struct RawExpertOperands {
  RawExpertOperands(int experts, int64_t rows, int D, int H)
      : rows(rows), D(D), H(H), a(experts * rows * D, 0.5f), h(experts * rows * H),
        y(experts * rows * D), w1(experts * D * H, 0.01f), w2(experts * H * D, 0.01f),
        gw1(experts * D * H), gw2(experts * H * D) {}
  int64_t rows;
  int D, H;
  std::vector<float> a, h, y, w1, w2, gw1, gw2;
};

// Forward 2 GEMMs per local expert, backward 4; expert l's operands, or expert 0's for all when
// `hot`.
void RawExpertGemms(int local_experts, bool backward, bool hot, RawExpertOperands& o) {
  const int64_t rows = o.rows, D = o.D, H = o.H;
  for (int l = 0; l < local_experts; ++l) {
    const int64_t e = hot ? 0 : l;
    float *a = o.a.data() + e * rows * D, *h = o.h.data() + e * rows * H;
    float *y = o.y.data() + e * rows * D, *w1 = o.w1.data() + e * D * H;
    float *w2 = o.w2.data() + e * H * D, *gw1 = o.gw1.data() + e * D * H;
    float* gw2 = o.gw2.data() + e * H * D;
    if (!backward) {
      SgemmPacked(false, false, rows, H, D, 1.f, a, w1, 1.f, h);
      SgemmPacked(false, false, rows, D, H, 1.f, h, w2, 1.f, y);
    } else {
      SgemmPacked(true, false, H, D, rows, 1.f, h, y, 1.f, gw2);
      SgemmPacked(false, true, rows, H, D, 1.f, y, w2, 0.f, h);
      SgemmPacked(true, false, D, H, rows, 1.f, a, h, 1.f, gw1);
      SgemmPacked(false, true, rows, D, H, 1.f, h, w1, 0.f, a);
    }
  }
}

// One (E, cf) point of the router-versus-experts summary.
struct SweepRow {
  int E;
  double cf, router_ms, experts_ms, total_ms, tokens_per_s;
};

void PrintSweep(const std::vector<SweepRow>& rows) {
  printf("\n# router vs experts (forward), same iterations; tokens/s = layer fwd+bwd, all ranks\n");
  printf("%4s %5s | %10s %10s %8s | %9s %11s %8s\n", "E", "cf", "router ms", "experts ms",
         "rtr/exp", "fwd+bwd", "tokens/s", "vs first");
  for (const SweepRow& r : rows)
    printf("%4d %5.2f | %10.3f %10.3f %8.3f | %9.3f %11.0f %8.2f\n", r.E, r.cf, r.router_ms,
           r.experts_ms, r.router_ms / r.experts_ms, r.total_ms, r.tokens_per_s,
           rows[0].tokens_per_s / r.tokens_per_s);
}

const std::vector<std::string>& Phases() {
  static const std::vector<std::string> phases = {
      "router",      "dispatch_pack", "a2a_dispatch",     "experts",
      "a2a_combine", "combine",       "combine_bwd",      "a2a_combine_bwd",
      "experts_bwd", "a2a_dispatch_bwd", "dispatch_bwd",  "router_bwd"};
  return phases;
}

void PrintHeader(int world, const BlasThreadChoice& blas) {
  printf("# MoE layer forward+backward, EP=%d ranks, %d tokens/rank, groups of %d, D=%d H=%d "
         "k=%d\n",
         world, FLAGS_tokens_per_rank, FLAGS_group_tokens, FLAGS_dim, FLAGS_hidden, FLAGS_top_k);
  printf("# ms per iteration, max over ranks of the mean over %d iterations (after %d warm-up)\n",
         FLAGS_iters, FLAGS_warmup);
  printf("# router: noise_scale %.2f, importance %.4f, load %.4f, BPR %s; BLAS threads %d (%s); "
         "freed host memory %s\n",
         FLAGS_noise_scale, FLAGS_importance_weight, FLAGS_load_weight, FLAGS_bpr ? "on" : "off",
         blas.threads, blas.source.c_str(),
         FLAGS_keep_host_memory ? "kept" : "returned (glibc defaults)");
  printf("# BLAS kernels: %s\n", BlasCoreNote().c_str());
  printf("# exp/gemm, bwd/gemm: the expert phase over bare sgemm calls of its shapes on per-expert\n"
         "# operands (the same memory it reads); all/gemm: forward and backward together;\n"
         "# exp/hot, bwd/hot: over the same calls on one expert's operands reused for all\n"
         "# (cache-hot: a bound no layer reaches)\n");
  printf("%4s %4s %5s %6s |", "E", "EP", "cf", "C");
  for (const auto& p : Phases()) printf(" %9.9s", p.c_str());
  printf(" | %8s %8s | %9s %9s %9s %9s %9s\n", "fwd+bwd", "a2a %", "exp/gemm", "bwd/gemm",
         "all/gemm", "exp/hot", "bwd/hot");
}

MoeLayerOptions BenchOptions(int E, double cf) {
  MoeLayerOptions o;
  o.dim = FLAGS_dim;
  o.hidden = FLAGS_hidden;
  o.num_experts = E;
  o.top_k = FLAGS_top_k;
  o.group_tokens = FLAGS_group_tokens;
  o.capacity_factor_train = cf;
  o.noise_scale = static_cast<float>(FLAGS_noise_scale);
  o.importance_weight = static_cast<float>(FLAGS_importance_weight);
  o.load_weight = static_cast<float>(FLAGS_load_weight);
  o.batch_prioritized = FLAGS_bpr;
  return o;
}

// Seconds per timed iteration: the layer's forward+backward, and the bare expert GEMMs.
struct Timings {
  double layer = 0, raw_fwd = 0, raw_bwd = 0, hot_fwd = 0, hot_bwd = 0;
};

// Raw GEMMs of the expert shapes (every local expert receives EP * groups * C rows) run inside
// the same iterations as the layer, so both see the same machine load.
Timings TimeIterations(MoeLayer* layer, MoeStepContext ctx, Profiler* prof, int rank, int world,
                       int El) {
  const int D = FLAGS_dim, H = FLAGS_hidden;
  const int64_t T = FLAGS_tokens_per_rank;
  Tensor x({T, D});
  CounterRng rng(rank + 1);
  for (int64_t i = 0; i < x.numel(); ++i) x.at(i) = rng.Normal(i);
  Tensor dy = x.Clone();
  const int64_t rows = static_cast<int64_t>(world) * (T / FLAGS_group_tokens) *
                       layer->CurrentCapacity();
  RawExpertOperands raw(El, rows, D, H);
  Timings t;
  for (int it = 0; it < FLAGS_warmup + FLAGS_iters; ++it) {
    const double timed = it >= FLAGS_warmup ? 1.0 / FLAGS_iters : 0.0;
    ctx.step = it;
    ctx.profiler = timed > 0 ? prof : nullptr;
    layer->SetStepContext(ctx);
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = Now();
    layer->Forward(x);
    layer->Backward(dy);
    t.layer += (Now() - t0) * timed;
    MPI_Barrier(MPI_COMM_WORLD);
    for (bool hot : {false, true}) {
      t0 = Now();
      RawExpertGemms(El, /*backward=*/false, hot, raw);
      (hot ? t.hot_fwd : t.raw_fwd) += (Now() - t0) * timed;
      t0 = Now();
      RawExpertGemms(El, /*backward=*/true, hot, raw);
      (hot ? t.hot_bwd : t.raw_bwd) += (Now() - t0) * timed;
    }
  }
  return t;
}

// One (E, cf) point: its row of the phase table (rank 0), and its sweep summary.
SweepRow MeasurePoint(int E, double cf, MpiCommunicator* comm, int rank, int world) {
  const int64_t T = FLAGS_tokens_per_rank;
  MoeLayer layer("bench", BenchOptions(E, cf), comm, 1);
  Profiler prof;
  MoeStepContext ctx;
  ctx.first_global_group = rank * (T / FLAGS_group_tokens);
  ctx.num_global_groups = world * (T / FLAGS_group_tokens);
  const Timings t = TimeIterations(&layer, ctx, &prof, rank, world, E / world);
  const auto& st = prof.Stats();
  auto phase_s = [&](const std::string& p) {
    auto i = st.find(p);
    return i == st.end() ? 0.0 : i->second.total_seconds / FLAGS_iters;
  };
  std::vector<double> ms;
  for (const auto& p : Phases()) ms.push_back(1e3 * MaxOverRanks(phase_s(p)));
  const double total = 1e3 * MaxOverRanks(t.layer);
  const double a2a = ms[2] + ms[4] + ms[7] + ms[9];
  // Ratios per rank in one run, then the worst rank.
  const double rf = MaxOverRanks(phase_s("experts") / t.raw_fwd);
  const double rb = MaxOverRanks(phase_s("experts_bwd") / t.raw_bwd);
  const double ra = MaxOverRanks((phase_s("experts") + phase_s("experts_bwd")) /
                                 (t.raw_fwd + t.raw_bwd));
  const double hf = MaxOverRanks(phase_s("experts") / t.hot_fwd);
  const double hb = MaxOverRanks(phase_s("experts_bwd") / t.hot_bwd);
  if (rank == 0) {
    printf("%4d %4d %5.2f %6lld |", E, world, cf, static_cast<long long>(layer.CurrentCapacity()));
    for (double v : ms) printf(" %9.3f", v);
    printf(" | %8.2f %7.1f%% | %9.3f %9.3f %9.3f %9.3f %9.3f\n", total, 100.0 * a2a / total, rf,
           rb, ra, hf, hb);
  }
  // ms[0] = router, ms[3] = experts (forward); tokens/s over the whole EP group.
  return {E, cf, ms[0], ms[3], total, 1e3 * static_cast<double>(T) * world / total};
}

int Run() {
  int rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  const BlasThreadChoice blas = SetBlasThreadsFromEnv();
  if (blas.threads == 0) {
    if (rank == 0) fprintf(stderr, "config error: %s\n", blas.error.c_str());
    return 2;
  }
  std::string memory_error;
  if (FLAGS_keep_host_memory && !KeepFreedHostMemory(&memory_error)) {
    if (rank == 0) fprintf(stderr, "host memory: %s\n", memory_error.c_str());
    return 1;
  }
  MpiCommunicator comm(MPI_COMM_WORLD, world);
  CHECK_EQ(FLAGS_tokens_per_rank % FLAGS_group_tokens, 0)
      << "--tokens_per_rank must be a multiple of --group_tokens";
  if (rank == 0) PrintHeader(world, blas);
  std::vector<SweepRow> sweep;
  for (double e_d : ParseList(FLAGS_experts)) {
    const int E = static_cast<int>(e_d);
    if (E % world != 0) continue;
    for (double cf : ParseList(FLAGS_capacity_factors))
      sweep.push_back(MeasurePoint(E, cf, &comm, rank, world));
  }
  if (rank == 0) PrintSweep(sweep);
  return 0;
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  MPI_Init(&argc, &argv);
  google::InitGoogleLogging(argv[0]);
  const int rc = moe::Run();
  MPI_Finalize();
  return rc;
}
