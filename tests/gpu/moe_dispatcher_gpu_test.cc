// The CUDA HIERARCHICAL and PIPELINED dispatchers against the FLAT one, all on the GPU: layers
// built with the same seed on the same NcclCommunicator, one switched to the dispatcher under
// test, the same inputs, two training steps each (Forward + Backward). Every device output is
// NaN-poisoned first (MOE_EP_CUDA_POISON=1), so a row a dispatcher fails to deliver (or reads
// before its exchange or experts are done: a missing event wait) fails the comparison. Cases:
// capacity with drops and dropless (whose block sizes differ per pair).
//
// HIERARCHICAL (models/moe/cuda_two_level_exchange.h) only moves bytes, never sums them, so y,
// dx and every parameter gradient must be BIT-equal, and the metrics equal. EP sizes and nodes:
// EP 1 with ranks_per_node 1 (both levels are self-exchanges through NCCL), and under mpirun
// EP = world with ranks_per_node 1 (all traffic crosses "nodes") and 2 (both levels carry data;
// world even); ranks_per_node 0 at both EP sizes (the machine's nodes: one host here).
//
// PIPELINED (models/moe/cuda_pipelined_token_dispatcher.h), 2 and 3 chunks at EP 1 and EP =
// world: the routing is the planner's, so the metrics are equal; the expert GEMMs get fewer rows
// per call and cuBLAS may pick another kernel, whose accumulation order over K differs. For a
// product of [M, K] by [K, N] computed in two orders, ||dY||_F <= 2 K u ||X||_F ||W||_F
// (u = 2^-24; Higham's gamma_K, twice), and for operands of independent entries ||X||_F ||W||_F
// is sqrt(K) ||Y||_F, so the norm-relative difference is at most 2 u K^1.5 per GEMM. The path to
// y crosses the D-deep and the H-deep expert GEMM (GELU's slope is at most 1.13), the path to dx
// and the gradients crosses each twice more: tolerance 4 u (D^1.5 + 1.13 H^1.5) = 1.3e-4 for
// D = 32, H = 48. An expert's weight gradient is also summed chunk by chunk over its n <= rows x
// k rows of the EP group: 2 n u more. A lost, misplaced or unwaited row moves a norm by ~1/rows
// ~ 1e-2 or makes it NaN.
//
//   moe_gpu_tests --gtest_filter='*MoeDispatcherGpu*'
//   mpirun -np 4 moe_gpu_tests --gtest_filter='*MoeDispatcherGpu*'   (one GPU shared)
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "comm/mpi_communicator.h"
#include "comm/nccl/nccl_communicator.h"
#include "core/kernels/cuda/cuda_check.h"
#include "models/moe/moe_layer.h"
#include "tests/gpu/gpu_test_util.h"

namespace moe {
namespace {

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

NcclCommunicator* Nccl(int ep_size) {
  State& s = GetState();
  Communicators& c = s.by_ep_size[ep_size];
  if (!c.nccl) {
    c.mpi = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, ep_size);
    c.nccl = std::make_unique<NcclCommunicator>(*c.mpi, s.stream);
  }
  return c.nccl.get();
}

class MoeDispatcherGpuEnvironment : public ::testing::Environment {
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

::testing::Environment* const kMoeDispatcherGpuEnvironment =
    ::testing::AddGlobalTestEnvironment(new MoeDispatcherGpuEnvironment);

Tensor RandomDevice(std::vector<int64_t> shape, unsigned seed) {
  Tensor host(std::move(shape));
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (int64_t i = 0; i < host.numel(); ++i) host.at(i) = u(gen);
  Tensor d(host.shape(), Device::kCUDA);
  d.CopyFrom(host);
  return d;
}

struct Case {
  const char* name;
  bool dropless;
  double capacity_factor;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class MoeDispatcherGpuTest : public ::testing::TestWithParam<Case> {};

MoeLayerOptions LayerOptions(const Case& c) {
  MoeLayerOptions o;
  o.dim = 32;
  o.hidden = 48;
  o.num_experts = 8;
  o.top_k = 2;
  o.group_tokens = 24;
  o.capacity_factor_train = c.capacity_factor;
  o.capacity_factor_eval = c.capacity_factor;
  o.dropless = c.dropless;
  o.importance_weight = 0.5f;
  o.load_weight = 0.5f;
  return o;
}

double RelDiff(const std::vector<float>& got, const std::vector<float>& want) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < want.size() && i < got.size(); ++i) {
    const double d = static_cast<double>(got[i]) - want[i];
    diff += d * d;
    scale += static_cast<double>(want[i]) * want[i];
  }
  if (got.size() != want.size()) return INFINITY;
  return scale > 0 ? std::sqrt(diff / scale) : std::sqrt(diff);  // NaN stays NaN: fails <=
}

// Norm-relative bounds; both 0: bit-equal.
struct Bounds {
  double outputs = 0;       // y, dx and the router's gradients
  double expert_grads = 0;  // the experts' weight and bias gradients
};

void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, double bound,
                 const std::string& what) {
  if (bound == 0) {
    EXPECT_EQ(got, want) << what;
  } else {
    const double d = RelDiff(got, want);
    EXPECT_LE(d, bound) << what << ": norm-relative difference " << d;
  }
}

// Runs FLAT and `other` side by side for two steps: metrics equal, tensors within `bounds`.
void ExpectCloseToFlat(const MoeLayerOptions& o, int ep, const DispatcherOptions& other,
                       const Bounds& bounds = Bounds{}) {
  int rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  NcclCommunicator* comm = Nccl(ep);
  MoeLayer flat("moe", o, comm, /*seed=*/7), tested("moe", o, comm, /*seed=*/7);
  tested.SetDispatcherOptions(other);
  flat.MoveTo(Device::kCUDA);
  tested.MoveTo(Device::kCUDA);
  const int64_t G = 3, rows = G * o.group_tokens;
  for (int64_t step : {3, 4}) {
    SCOPED_TRACE("step " + std::to_string(step));
    MoeStepContext ctx;
    ctx.training = true;
    ctx.step = step;
    ctx.first_global_group = static_cast<int64_t>(rank) * G;
    ctx.num_global_groups = static_cast<int64_t>(world) * G;
    flat.SetStepContext(ctx);
    tested.SetStepContext(ctx);
    const unsigned seed = static_cast<unsigned>(step * 100 + rank);
    const Tensor x = RandomDevice({rows, o.dim}, seed), dy = RandomDevice({rows, o.dim}, seed + 1);
    const Tensor y_flat = flat.Forward(x), dx_flat = flat.Backward(dy);
    const Tensor y = tested.Forward(x), dx = tested.Backward(dy);
    CUDA_CHECK(cudaStreamSynchronize(GetState().stream));
    CUDA_CHECK(cudaDeviceSynchronize());
    ExpectClose(y.ToVector(), y_flat.ToVector(), bounds.outputs, "y");
    ExpectClose(dx.ToVector(), dx_flat.ToVector(), bounds.outputs, "dx");
    EXPECT_EQ(tested.metrics().tokens_per_expert, flat.metrics().tokens_per_expert);
    EXPECT_EQ(tested.metrics().dropped, flat.metrics().dropped);
    EXPECT_EQ(tested.metrics().aux_loss, flat.metrics().aux_loss);
  }
  const std::vector<Parameter*> pf = flat.Parameters(), pt = tested.Parameters();
  ASSERT_EQ(pf.size(), pt.size());
  for (size_t i = 0; i < pf.size(); ++i)
    ExpectClose(pt[i]->grad.ToVector(), pf[i]->grad.ToVector(),
                pf[i]->is_expert() ? bounds.expert_grads : bounds.outputs, pf[i]->name);
}

TEST_P(MoeDispatcherGpuTest, HierarchicalEqualsFlat) {
  SKIP_WITHOUT_GPU();
  setenv("MOE_EP_CUDA_POISON", "1", /*overwrite=*/1);
  EnsureMpiAndDevice();
  const MoeLayerOptions o = LayerOptions(GetParam());
  int world = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  // (ep size, ranks per node); 0: the machine's nodes (one host here: L = the EP size).
  std::vector<std::pair<int, int>> ep_and_nodes = {{1, 1}, {1, 0}};
  if (world > 1 && o.num_experts % world == 0) {
    ep_and_nodes.push_back({world, 1});
    if (world % 2 == 0) ep_and_nodes.push_back({world, 2});
    ep_and_nodes.push_back({world, 0});
  }
  for (const auto& [ep, ranks_per_node] : ep_and_nodes) {
    SCOPED_TRACE("ep_size=" + std::to_string(ep) + " ranks_per_node=" +
                 std::to_string(ranks_per_node));
    DispatcherOptions d;
    d.kind = DispatcherKind::kHierarchical;
    d.ranks_per_node = ranks_per_node;
    ExpectCloseToFlat(o, ep, d);
  }
}

TEST_P(MoeDispatcherGpuTest, PipelinedCloseToFlat) {
  SKIP_WITHOUT_GPU();
  setenv("MOE_EP_CUDA_POISON", "1", /*overwrite=*/1);
  EnsureMpiAndDevice();
  const MoeLayerOptions o = LayerOptions(GetParam());
  int world = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  std::vector<int> ep_sizes = {1};
  if (world > 1 && o.num_experts % world == 0) ep_sizes.push_back(world);
  const double u = std::ldexp(1.0, -24);
  for (int ep : ep_sizes) {
    Bounds b;  // derived in the header comment
    b.outputs = 4 * u * (std::pow(o.dim, 1.5) + 1.13 * std::pow(o.hidden, 1.5));
    const double n = 3.0 * o.group_tokens * ep * o.top_k;  // rows of the EP group x k
    b.expert_grads = b.outputs + 2 * n * u;
    for (int chunks : {2, 3}) {
      SCOPED_TRACE("ep_size=" + std::to_string(ep) + " chunks=" + std::to_string(chunks));
      DispatcherOptions d;
      d.kind = DispatcherKind::kPipelined;
      d.pipeline_chunks = chunks;
      ExpectCloseToFlat(o, ep, d, b);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, MoeDispatcherGpuTest,
                         ::testing::Values(Case{"CapacityWithDrops", false, 0.6},
                                           Case{"Dropless", true, 1.0}),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return std::string(info.param.name);
                         });

}  // namespace
}  // namespace moe
