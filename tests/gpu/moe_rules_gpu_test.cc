// Every routing rule of the MoE layer on the CUDA path against its CPU path: renormalised token
// top-k, expert choice, patch top-l (both gate forms and hard gates), per-image (with super-class
// guidance, capacity and dropless), attribute (with and without the token in the router input),
// and plain device token top-k as the control. Two layers built with the same seed; the GPU one
// moved to the device with MoveTo; two training steps on fresh random inputs, gradients pre-seeded
// with the same random values (so Backward's accumulation is checked). Compared: y, dx, every
// parameter gradient (attribute embedding included; fp32: max |gpu - cpu| relative to the
// tensor's max |cpu| < 1e-5), the metrics (counts exactly, losses relative 1e-5) and, for the
// rules decided on the host, the kept (row, expert, gate) assignments exactly.
//
// Why the routing decisions can be compared exactly: router weights are multiples of 1/64 and
// inputs multiples of 1/8 (per-image: T = 8, so the image means are multiples of 1/64), so every
// logit is exact in float whatever the GEMM's summation order; the attribute rule's logits are
// computed on the host by the CPU code on both paths. Noise, softmax and the rule itself are the
// same host functions on both paths.
//
// Communicators, per case: SelfCommunicator for both layers (EP 1, the GPU layer on the legacy
// default stream), then MpiCommunicator / NcclCommunicator with EP = the world size (1 in one
// process: NCCL on its own stream; 4 under mpirun -np 4: the all-to-alls and the dropless size
// exchange really go between ranks; every rank runs the same collectives in the same order and
// failures are EXPECTs). MPI is initialised by the first case that needs it and finalised at exit
// only if this file initialised it. Without a GPU every test reports SKIPPED before touching MPI.
//
//   moe_gpu_tests --gtest_filter='*MoeRulesGpu*'
//   mpirun -np 4 moe_gpu_tests --gtest_filter='*MoeRulesGpu*'
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "comm/mpi_communicator.h"
#include "comm/nccl/nccl_communicator.h"
#include "comm/self_communicator.h"
#include "core/kernels/cuda/cuda_check.h"
#include "models/moe/moe_layer.h"
#include "tests/gpu/gpu_test_util.h"

namespace moe {
namespace {

// ---- process-wide MPI / NCCL state (this file's own; see the header) ----

struct RulesState {
  bool initialised_mpi = false;
  cudaStream_t stream = nullptr;
  std::unique_ptr<MpiCommunicator> mpi;
  std::unique_ptr<NcclCommunicator> nccl;
};

RulesState& GetRulesState() {
  static RulesState* s = new RulesState;  // never destroyed: TearDown empties it
  return *s;
}

int WorldSize() {
  int w = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &w);
  return w;
}
int WorldRank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

// MPI, the device binding and the EP = world communicators, created once.
RulesState& MpiAndNccl() {
  RulesState& s = GetRulesState();
  if (s.nccl) return s;
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SINGLE, &provided);
    s.initialised_mpi = true;
  }
  BindDeviceForRank(MPI_COMM_WORLD, /*allow_shared_gpu=*/true);
  CUDA_CHECK(cudaStreamCreate(&s.stream));  // blocking: ordered with the legacy default stream
  s.mpi = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, WorldSize());
  s.nccl = std::make_unique<NcclCommunicator>(*s.mpi, s.stream);
  return s;
}

class MoeRulesGpuEnvironment : public ::testing::Environment {
 public:
  void TearDown() override {
    RulesState& s = GetRulesState();
    s.nccl.reset();  // NCCL, then MPI communicators (MpiCommunicator tolerates a finalised MPI)
    s.mpi.reset();
    if (s.stream != nullptr) {
      CUDA_CHECK(cudaStreamDestroy(s.stream));
      s.stream = nullptr;
    }
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (s.initialised_mpi && !finalized) MPI_Finalize();
  }
};

::testing::Environment* const kMoeRulesGpuEnvironment =
    ::testing::AddGlobalTestEnvironment(new MoeRulesGpuEnvironment);

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

std::vector<std::tuple<int64_t, int, float>> Kept(const MoeLayer& layer) {
  std::vector<std::tuple<int64_t, int, float>> v;
  layer.ForEachKeptAssignment([&v](int64_t t, int e, float g) { v.emplace_back(t, e, g); });
  return v;
}

constexpr double kTol = 1e-5;
constexpr int kAttributeDim = 5;

struct RuleCase {
  const char* name;
  RoutingRule rule;
  int64_t tokens_per_image;  // kPatchTopL / kPerImage
  double capacity_factor;
  bool dropless = false;
  bool bpr = false;
  bool renormalise = false;
  int patch_top_l = 0;
  bool patch_over_all = false;
  bool hard_gates = false;
  float superclass_weight = 0.f;
  bool attribute_with_token = false;
};

void PrintTo(const RuleCase& c, std::ostream* os) { *os << c.name; }

MoeLayerOptions OptionsFor(const RuleCase& c) {
  MoeLayerOptions o;
  o.dim = 32;
  o.hidden = 48;
  o.num_experts = 8;  // EP 1 or 4
  o.top_k = 2;
  o.group_tokens = 32;
  o.capacity_factor_train = c.capacity_factor;
  o.capacity_factor_eval = c.capacity_factor;
  o.dropless = c.dropless;
  o.batch_prioritized = c.bpr;
  // Large aux weights, every loss on: a wrong aux gradient cannot hide under the main term.
  o.importance_weight = 0.5f;
  o.load_weight = 0.5f;
  o.switch_weight = 0.5f;
  o.z_weight = 0.1f;
  o.rule = c.rule;
  o.tokens_per_image = c.tokens_per_image;
  o.patch_top_l = c.patch_top_l;
  o.patch_gate_over_all = c.patch_over_all;
  o.hard_gates = c.hard_gates;
  o.renormalise_gates = c.renormalise;
  o.superclass_weight = c.superclass_weight;
  if (c.rule == RoutingRule::kAttribute) {
    o.attribute_dim = kAttributeDim;
    o.attribute_with_token = c.attribute_with_token;
  }
  return o;
}

// One CPU layer and its MoveTo(kCUDA) twin on the given communicators; `rank` / `world` place
// this rank's groups in the global batch.
void CompareLayers(const RuleCase& c, Communicator* cpu_comm, Communicator* gpu_comm, int rank,
                   int world) {
  const MoeLayerOptions o = OptionsFor(c);
  const int64_t G = 3, rows = G * o.group_tokens;
  MoeLayer cpu("moe", o, cpu_comm, /*seed=*/11);
  MoeLayer gpu("moe", o, gpu_comm, /*seed=*/11);
  const std::vector<Parameter*> pc = cpu.Parameters(), pg = gpu.Parameters();
  ASSERT_EQ(pc.size(), pg.size());
  for (size_t i = 0; i < pc.size(); ++i) {
    ASSERT_EQ(pc[i]->value.ToVector(), pg[i]->value.ToVector()) << pc[i]->name << ": init";
    const Tensor g0 = RandomHost(pc[i]->grad.shape(), 2000 + static_cast<unsigned>(i), 1e-3f);
    pc[i]->grad.CopyFrom(g0);
    pg[i]->grad.CopyFrom(g0);
  }
  ASSERT_EQ(pc[0]->name, "moe.router.w");
  const Tensor router0 = RandomHost(pc[0]->value.shape(), 91, 0.5f, 1.f / 64);
  pc[0]->value.CopyFrom(router0);
  pg[0]->value.CopyFrom(router0);
  gpu.MoveTo(Device::kCUDA);
  for (Parameter* p : pg) {
    ASSERT_EQ(p->value.device(), Device::kCUDA) << p->name;
    ASSERT_EQ(p->grad.device(), Device::kCUDA) << p->name;
  }
  const bool host_decided = !(c.rule == RoutingRule::kTokenTopK && !c.renormalise);

  int64_t dropped_seen = 0, unrouted_seen = 0;
  for (int64_t step : {5, 6}) {
    SCOPED_TRACE("step " + std::to_string(step));
    const unsigned seed = static_cast<unsigned>(step * 100 + rank);
    const Tensor x = RandomHost({rows, o.dim}, seed, 1.f, 1.f / 8);
    const Tensor dy = RandomHost({rows, o.dim}, seed + 50);
    MoeStepContext ctx;
    ctx.training = true;
    ctx.step = step;
    ctx.first_global_group = static_cast<int64_t>(rank) * G;
    ctx.num_global_groups = static_cast<int64_t>(world) * G;
    std::vector<int> superclass;
    Tensor attributes;
    if (c.rule == RoutingRule::kPerImage) {
      const int64_t images = rows / c.tokens_per_image;
      std::mt19937 gen(seed + 7);
      for (int64_t i = 0; i < images; ++i) superclass.push_back(static_cast<int>(gen() % 8));
      ctx.superclass = &superclass;
      ctx.image_loss_scale = 1.f / static_cast<float>(images * world);
    }
    if (c.rule == RoutingRule::kAttribute) {
      attributes = Tensor({rows, kAttributeDim});
      std::mt19937 gen(seed + 9);
      for (int64_t i = 0; i < attributes.numel(); ++i) attributes.at(i) = (gen() & 1) ? 1.f : 0.f;
      ctx.attributes = &attributes;
    }
    cpu.SetStepContext(ctx);
    gpu.SetStepContext(ctx);

    const Tensor y_cpu = cpu.Forward(x);
    const MoeMetrics m_cpu = cpu.metrics();
    const auto kept_cpu = Kept(cpu);
    const Tensor dx_cpu = cpu.Backward(dy);

    const Tensor y_gpu = gpu.Forward(ToDevice(x));
    const MoeMetrics m_gpu = gpu.metrics();
    const Tensor dx_gpu = gpu.Backward(ToDevice(dy));
    CUDA_CHECK(cudaDeviceSynchronize());
    ASSERT_EQ(y_gpu.device(), Device::kCUDA);
    ASSERT_EQ(dx_gpu.device(), Device::kCUDA);

    if (host_decided) EXPECT_EQ(Kept(gpu), kept_cpu) << "routing plan";
    EXPECT_LT(MaxRelErr(y_gpu.ToVector(), y_cpu.ToVector()), kTol) << "y";
    EXPECT_LT(MaxRelErr(dx_gpu.ToVector(), dx_cpu.ToVector()), kTol) << "dx";
    EXPECT_EQ(m_gpu.tokens_per_expert, m_cpu.tokens_per_expert);
    EXPECT_EQ(m_gpu.assignments, m_cpu.assignments);
    EXPECT_EQ(m_gpu.dropped, m_cpu.dropped);
    EXPECT_EQ(m_gpu.capacity_slots, m_cpu.capacity_slots);
    EXPECT_EQ(m_gpu.unrouted_rows, m_cpu.unrouted_rows);
    EXPECT_EQ(m_gpu.superclass_correct, m_cpu.superclass_correct);
    EXPECT_LT(RelDiff(m_gpu.aux_loss, m_cpu.aux_loss), kTol) << "aux_loss";
    EXPECT_LT(RelDiff(m_gpu.importance_loss, m_cpu.importance_loss), kTol);
    EXPECT_LT(RelDiff(m_gpu.load_loss, m_cpu.load_loss), kTol);
    EXPECT_LT(RelDiff(m_gpu.switch_loss, m_cpu.switch_loss), kTol);
    EXPECT_LT(RelDiff(m_gpu.z_loss, m_cpu.z_loss), kTol);
    EXPECT_LT(RelDiff(m_gpu.superclass_loss, m_cpu.superclass_loss), kTol);
    EXPECT_GT(m_cpu.aux_loss, 0);
    if (c.superclass_weight > 0) EXPECT_GT(m_cpu.superclass_loss, 0);
    dropped_seen += m_cpu.dropped;
    unrouted_seen += m_cpu.unrouted_rows;
  }
  // After two steps: every gradient = seed + step 5 + step 6, on both paths.
  for (size_t i = 0; i < pc.size(); ++i)
    EXPECT_LT(MaxRelErr(pg[i]->grad.ToVector(), pc[i]->grad.ToVector()), kTol) << pc[i]->name;
  // The cases are sized so that each exercises what its rule leaves out.
  const bool expert_side = c.rule == RoutingRule::kExpertChoice || c.rule == RoutingRule::kPatchTopL;
  if (expert_side) {
    EXPECT_GT(unrouted_seen, 0) << "expert-side rules here must leave rows unrouted";
  } else if (c.dropless) {
    EXPECT_EQ(dropped_seen, 0);
  } else {
    EXPECT_GT(dropped_seen, 0) << "this case must exercise dropped choices";
  }
}

class MoeRulesGpuTest : public ::testing::TestWithParam<RuleCase> {};

TEST_P(MoeRulesGpuTest, MatchesCpuLayer) {
  SKIP_WITHOUT_GPU();
  const RuleCase c = GetParam();
  setenv("MOE_EP_CUDA_POISON", "1", /*overwrite=*/1);
  {
    SCOPED_TRACE("SelfCommunicator, ep_size=1");
    SelfCommunicator cpu_comm, gpu_comm;
    CompareLayers(c, &cpu_comm, &gpu_comm, /*rank=*/0, /*world=*/1);
  }
  RulesState& s = MpiAndNccl();
  const int world = WorldSize(), rank = WorldRank();
  SCOPED_TRACE("NCCL, ep_size=" + std::to_string(world) + " rank=" + std::to_string(rank));
  CompareLayers(c, s.mpi.get(), s.nccl.get(), rank, world);
}

// Capacities (n = 32 tokens per group, E = 8): token-side k = 2, cf 0.6 -> C = ceil(2*32*0.6/8)
// = 5 for 8 choices per expert on average (drops); expert choice cf 1.0 -> C = 4 of 32 tokens per
// expert (rows left unrouted); patch top-l T = 8, l = 2 -> 2 of each image's 8 patches per
// expert; per-image T = 8 (4 images per group), cf 0.5 -> 1 image per expert (drops).
INSTANTIATE_TEST_SUITE_P(
    Rules, MoeRulesGpuTest,
    ::testing::Values(
        RuleCase{"DeviceTokenTopK", RoutingRule::kTokenTopK, 0, 0.6},
        RuleCase{"RenormalisedTopKBpr", RoutingRule::kTokenTopK, 0, 0.6, false, true, true},
        RuleCase{"RenormalisedTopKDropless", RoutingRule::kTokenTopK, 0, 1.0, true, false, true},
        RuleCase{"ExpertChoice", RoutingRule::kExpertChoice, 0, 1.0},
        RuleCase{"PatchTopLKept", RoutingRule::kPatchTopL, 8, 1.0, false, false, false, 2},
        RuleCase{"PatchTopLOverAll", RoutingRule::kPatchTopL, 8, 1.0, false, false, false, 2,
                 true},
        RuleCase{"PatchTopLHardGates", RoutingRule::kPatchTopL, 8, 1.0, false, false, false, 2,
                 false, true},
        RuleCase{"PerImageSuperclass", RoutingRule::kPerImage, 8, 0.5, false, false, false, 0,
                 false, false, 0.3f},
        RuleCase{"PerImageDroplessBpr", RoutingRule::kPerImage, 8, 1.0, true, true},
        RuleCase{"AttributeWithToken", RoutingRule::kAttribute, 0, 0.6, false, true, false, 0,
                 false, false, 0.f, true},
        RuleCase{"AttributeDropless", RoutingRule::kAttribute, 0, 1.0, true}),
    [](const ::testing::TestParamInfo<RuleCase>& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace moe
