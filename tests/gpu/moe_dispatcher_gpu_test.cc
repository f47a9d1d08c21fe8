// The CUDA HIERARCHICAL dispatcher (models/moe/cuda_two_level_exchange.h: the FLAT device
// dispatcher over a two-level expert all-to-all-v) against the FLAT one, both on the GPU: two
// layers built with the same seed on the same NcclCommunicator, one switched to HIERARCHICAL,
// the same inputs, two training steps each (Forward + Backward). The two-level exchange only
// moves bytes, never sums them, so y, dx and every parameter gradient must be BIT-equal, and the
// metrics equal. Every device output is NaN-poisoned first (MOE_EP_CUDA_POISON=1), so a row the
// exchange fails to deliver fails the comparison. Cases: capacity with drops and dropless (whose
// block sizes differ per pair, so the level-2 size exchange matters).
//
// EP sizes and nodes: EP 1 with ranks_per_node 1 (both levels are self-exchanges through NCCL),
// and under mpirun EP = world with ranks_per_node 1 (all traffic crosses "nodes") and 2 (both
// levels carry data; world even); ranks_per_node 0 at both EP sizes (the machine's nodes, from
// the MPI split behind the NcclCommunicator: one host, so one node of all the EP ranks).
//
//   moe_gpu_tests --gtest_filter='*MoeDispatcherGpu*'
//   mpirun -np 4 moe_gpu_tests --gtest_filter='*MoeDispatcherGpu*'   (one GPU shared)
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <mpi.h>

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

// Runs FLAT and `kind` side by side for two steps; everything must be bit-equal.
void ExpectSameAsFlat(const MoeLayerOptions& o, int ep, const DispatcherOptions& other) {
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
    EXPECT_EQ(y.ToVector(), y_flat.ToVector()) << "y";
    EXPECT_EQ(dx.ToVector(), dx_flat.ToVector()) << "dx";
    EXPECT_EQ(tested.metrics().tokens_per_expert, flat.metrics().tokens_per_expert);
    EXPECT_EQ(tested.metrics().dropped, flat.metrics().dropped);
    EXPECT_EQ(tested.metrics().aux_loss, flat.metrics().aux_loss);
  }
  const std::vector<Parameter*> pf = flat.Parameters(), pt = tested.Parameters();
  ASSERT_EQ(pf.size(), pt.size());
  for (size_t i = 0; i < pf.size(); ++i)
    EXPECT_EQ(pt[i]->grad.ToVector(), pf[i]->grad.ToVector()) << pf[i]->name;
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
    ExpectSameAsFlat(o, ep, d);
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
