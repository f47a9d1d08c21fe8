// The MoE layer's CUDA backend (models/moe/cuda_moe_backend.cc: planners, token dispatcher,
// expert_compute_cuda.cc) against its CPU path: two layers built with the same seed (so the same
// initial parameters), the GPU one moved to the device with MoveTo, the same inputs, two training
// steps each (Forward + Backward, with parameter gradients pre-seeded with the same random values
// so the beta = 1 accumulation is checked too). Compared: y, dx, every parameter gradient (fp32,
// max |gpu - cpu| relative to the tensor's max |cpu| < 1e-5), and the metrics (counts exactly,
// losses relative 1e-5). Cases:
// capacity mode with drops, BPR with drops, dropless, eval mode (no noise, no aux losses) and a
// width that is not a multiple of 4 (the kernels' scalar paths). Every device output the layer
// allocates is NaN-poisoned first (MOE_EP_CUDA_POISON=1), so an unwritten row fails.
//
// Communicators: the CPU layer gets an MpiCommunicator, the GPU layer an NcclCommunicator built
// from it (the device path needs a communicator on device memory). EP sizes: 1, and the world
// size when started under mpirun (then the all-to-alls and the dropless size exchange really go
// between ranks; every rank runs the same collectives in the same order, and failures are
// EXPECTs, so no rank leaves the others waiting). MPI is initialised by the first test that needs
// it, finalised at exit only if this file initialised it. Without a GPU every test reports
// SKIPPED before touching MPI or NCCL.
//
//   moe_gpu_tests --gtest_filter='*MoeLayerGpu*'             (one process, EP 1)
//   mpirun -np 4 moe_gpu_tests --gtest_filter='*MoeLayerGpu*' (EP 1 and EP 4, one GPU shared)
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "comm/mpi_communicator.h"
#include "comm/nccl/nccl_communicator.h"
#include "core/kernels/cuda/cuda_check.h"
#include "models/moe/moe_layer.h"
#include "tests/gpu/gpu_test_util.h"

namespace moe {
namespace {

// ---- process-wide MPI / NCCL state ----

struct Communicators {
  std::unique_ptr<MpiCommunicator> mpi;
  std::unique_ptr<NcclCommunicator> nccl;
};

struct State {
  bool initialised_mpi = false;
  cudaStream_t stream = nullptr;
  std::map<int, Communicators> by_ep_size;
};

State& GetState() {
  static State* s = new State;  // never destroyed: TearDown empties it before MPI_Finalize
  return *s;
}

void EnsureMpiAndDevice() {
  State& s = GetState();
  if (s.stream != nullptr) return;
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SINGLE, &provided);
    s.initialised_mpi = true;
  }
  BindDeviceForRank(MPI_COMM_WORLD, /*allow_shared_gpu=*/true);
  CUDA_CHECK(cudaStreamCreate(&s.stream));  // blocking: ordered with the legacy default stream
}

Communicators& Comms(int ep_size) {
  State& s = GetState();
  Communicators& c = s.by_ep_size[ep_size];
  if (!c.nccl) {
    c.mpi = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, ep_size);
    c.nccl = std::make_unique<NcclCommunicator>(*c.mpi, s.stream);
  }
  return c;
}

class MoeLayerGpuEnvironment : public ::testing::Environment {
 public:
  void TearDown() override {
    State& s = GetState();
    s.by_ep_size.clear();  // NCCL, then MPI communicators, before MPI_Finalize
    if (s.stream != nullptr) {
      CUDA_CHECK(cudaStreamDestroy(s.stream));
      s.stream = nullptr;
    }
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (s.initialised_mpi && !finalized) MPI_Finalize();
  }
};

::testing::Environment* const kMoeLayerGpuEnvironment =
    ::testing::AddGlobalTestEnvironment(new MoeLayerGpuEnvironment);

int WorldRank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int WorldSize() {
  int w = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &w);
  return w;
}

// ---- helpers ----

// U(-scale, scale); with quantum > 0 rounded to multiples of it.
Tensor RandomHost(std::vector<int64_t> shape, unsigned seed, float scale = 1.f,
                  float quantum = 0.f) {
  Tensor t(std::move(shape));
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> u(-scale, scale);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const float v = u(gen);
    t.at(i) = quantum > 0 ? std::round(v / quantum) * quantum : v;
  }
  return t;
}

Tensor ToDevice(const Tensor& host) {
  Tensor d(host.shape(), Device::kCUDA);
  d.CopyFrom(host);
  return d;
}

// max |got - ref| / max |ref|; an element NaN in got but not in ref is infinitely wrong.
double MaxRelErr(const std::vector<float>& got, const std::vector<float>& ref) {
  if (got.size() != ref.size()) return std::numeric_limits<double>::infinity();
  double scale = 0, worst = 0;
  for (float r : ref) scale = std::max(scale, std::fabs(static_cast<double>(r)));
  scale = std::max(scale, 1e-30);
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(got[i]) && !std::isnan(ref[i])) return std::numeric_limits<double>::infinity();
    worst = std::max(worst, std::fabs(static_cast<double>(got[i]) - ref[i]) / scale);
  }
  return worst;
}

double RelDiff(double got, double ref) {
  return std::fabs(got - ref) / std::max(std::fabs(ref), 1e-12);
}

constexpr double kTol = 1e-5;

struct Case {
  const char* name;
  int dim, hidden;
  bool training, dropless, bpr;
  double capacity_factor;  // the train or eval factor, as the mode uses
  bool expect_drops;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class MoeLayerGpuTest : public ::testing::TestWithParam<Case> {};

TEST_P(MoeLayerGpuTest, MatchesCpuLayer) {
  SKIP_WITHOUT_GPU();
  const Case c = GetParam();
  setenv("MOE_EP_CUDA_POISON", "1", /*overwrite=*/1);
  EnsureMpiAndDevice();
  const int world = WorldSize(), rank = WorldRank();

  MoeLayerOptions o;
  o.dim = c.dim;
  o.hidden = c.hidden;
  o.num_experts = 8;
  o.top_k = 2;
  o.group_tokens = 24;
  o.capacity_factor_train = c.capacity_factor;
  o.capacity_factor_eval = c.capacity_factor;
  o.dropless = c.dropless;
  o.batch_prioritized = c.bpr;
  // Large aux weights, every loss on: a wrong aux gradient cannot hide under the main term.
  o.importance_weight = 0.5f;
  o.load_weight = 0.5f;
  o.switch_weight = 0.5f;
  o.z_weight = 0.1f;
  const int64_t G = 3, rows = G * o.group_tokens;

  std::vector<int> ep_sizes = {1};
  if (world > 1 && o.num_experts % world == 0) ep_sizes.push_back(world);
  for (int ep : ep_sizes) {
    SCOPED_TRACE("ep_size=" + std::to_string(ep) + " rank=" + std::to_string(rank));
    Communicators& comms = Comms(ep);
    MoeLayer cpu("moe", o, comms.mpi.get(), /*seed=*/7);
    MoeLayer gpu("moe", o, comms.nccl.get(), /*seed=*/7);
    const std::vector<Parameter*> pc = cpu.Parameters(), pg = gpu.Parameters();
    ASSERT_EQ(pc.size(), pg.size());
    // Router weights in multiples of 1/64 and inputs in multiples of 1/8: every product is a
    // multiple of 1/512 and every logit sum exact in float whatever the GEMM's order, so both
    // paths route on bit-identical logits (cuBLAS and OpenBLAS sum in different orders; an ulp
    // there could flip a near-tie in top-k or BPR and make the comparison meaningless). O(1)
    // logits, so gates differ and the routing is decisive. Gradients start from the same small
    // random values, so Backward's accumulation (beta = 1) is checked, not just its result.
    for (size_t i = 0; i < pc.size(); ++i) {
      ASSERT_EQ(pc[i]->value.ToVector(), pg[i]->value.ToVector()) << pc[i]->name << ": init";
      const Tensor g0 = RandomHost(pc[i]->grad.shape(), 1000 + static_cast<unsigned>(i), 1e-3f);
      pc[i]->grad.CopyFrom(g0);
      pg[i]->grad.CopyFrom(g0);
    }
    const Tensor router0 = RandomHost(pc[0]->value.shape(), 77, 0.5f, 1.f / 64);
    pc[0]->value.CopyFrom(router0);
    pg[0]->value.CopyFrom(router0);
    gpu.MoveTo(Device::kCUDA);
    for (Parameter* p : pg) {
      ASSERT_EQ(p->value.device(), Device::kCUDA);
      ASSERT_EQ(p->grad.device(), Device::kCUDA);
    }

    int64_t dropped_seen = 0;
    for (int64_t step : {3, 4}) {
      SCOPED_TRACE("step " + std::to_string(step));
      MoeStepContext ctx;
      ctx.training = c.training;
      ctx.step = step;
      ctx.first_global_group = static_cast<int64_t>(rank) * G;
      ctx.num_global_groups = static_cast<int64_t>(world) * G;
      cpu.SetStepContext(ctx);
      gpu.SetStepContext(ctx);
      const unsigned seed = static_cast<unsigned>(step * 100 + rank);
      const Tensor x = RandomHost({rows, o.dim}, seed, 1.f, 1.f / 8);
      const Tensor dy = RandomHost({rows, o.dim}, seed + 50);

      const Tensor y_cpu = cpu.Forward(x);
      const MoeMetrics m_cpu = cpu.metrics();
      const Tensor dx_cpu = cpu.Backward(dy);

      const Tensor y_gpu = gpu.Forward(ToDevice(x));
      const MoeMetrics m_gpu = gpu.metrics();
      const Tensor dx_gpu = gpu.Backward(ToDevice(dy));
      CUDA_CHECK(cudaStreamSynchronize(GetState().stream));
      ASSERT_EQ(y_gpu.device(), Device::kCUDA);
      ASSERT_EQ(dx_gpu.device(), Device::kCUDA);

      EXPECT_LT(MaxRelErr(y_gpu.ToVector(), y_cpu.ToVector()), kTol) << "y";
      EXPECT_LT(MaxRelErr(dx_gpu.ToVector(), dx_cpu.ToVector()), kTol) << "dx";
      EXPECT_EQ(m_gpu.tokens_per_expert, m_cpu.tokens_per_expert);
      EXPECT_EQ(m_gpu.assignments, m_cpu.assignments);
      EXPECT_EQ(m_gpu.dropped, m_cpu.dropped);
      EXPECT_EQ(m_gpu.capacity_slots, m_cpu.capacity_slots);
      EXPECT_LT(RelDiff(m_gpu.aux_loss, m_cpu.aux_loss), kTol) << "aux_loss";
      EXPECT_LT(RelDiff(m_gpu.importance_loss, m_cpu.importance_loss), kTol);
      EXPECT_LT(RelDiff(m_gpu.load_loss, m_cpu.load_loss), kTol);
      EXPECT_LT(RelDiff(m_gpu.switch_loss, m_cpu.switch_loss), kTol);
      EXPECT_LT(RelDiff(m_gpu.z_loss, m_cpu.z_loss), kTol);
      if (c.training) EXPECT_GT(m_cpu.aux_loss, 0);
      dropped_seen += m_cpu.dropped;
    }
    // After two steps: every gradient = seed + step 3 + step 4, on both paths.
    for (size_t i = 0; i < pc.size(); ++i)
      EXPECT_LT(MaxRelErr(pg[i]->grad.ToVector(), pc[i]->grad.ToVector()), kTol)
          << pc[i]->name << " (global expert " << pc[i]->global_expert_id << ")";
    if (c.expect_drops) {
      EXPECT_GT(dropped_seen, 0) << "this case must exercise dropped tokens";
    }
    if (c.dropless) EXPECT_EQ(dropped_seen, 0);
  }
}

// C = ceil(k * n * cf / E) with k = 2, n = 24, E = 8: cf 0.6 -> 4 slots per expert for 6 choices
// per expert on average (drops guaranteed); cf 1.25 -> 8.
INSTANTIATE_TEST_SUITE_P(
    Modes, MoeLayerGpuTest,
    ::testing::Values(Case{"CapacityWithDrops", 32, 48, true, false, false, 0.6, true},
                      Case{"BprWithDrops", 32, 48, true, false, true, 0.6, true},
                      Case{"Dropless", 32, 48, true, true, false, 1.0, false},
                      Case{"EvalCapacity", 32, 48, false, false, false, 1.25, false},
                      Case{"ScalarWidthBpr", 30, 20, true, false, true, 1.0, false}),
    [](const ::testing::TestParamInfo<Case>& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace moe
