// The HIERARCHICAL and PIPELINED token dispatchers against FLAT, on 4 ranks:
//  - the node split (ranks_per_node 2 on an EP group of 4: nodes {0,1} and {2,3});
//  - the two-level all-to-all-v delivers exactly what the flat one does, for uneven counts;
//  - a bare MoeLayer (token top-k with and without drops, dropless, expert choice) at EP 4 and
//    EP 2 x DP 2: HIERARCHICAL bit-identical (outputs, dx, every gradient); PIPELINED with the
//    same routing and drops, the router's gradients within the tolerance below, the outputs, dx
//    and the experts' gradients within their tolerances (below);
//  - TrainingSession steps with either dispatcher against the one-rank FLAT reference, through
//    the EP-invariance harness (tests/mpi/ep_invariance_util.h: losses, routing, gradients).
//
// PIPELINED's expert-gradient tolerance: an element of dW1, dW2, db1 or db2 is a sum over the n
// rows an expert received; FLAT adds them in one GEMM, PIPELINED in one GEMM per chunk and then
// chunk after chunk. Each order is within n u sum|terms| of the exact sum (u = 2^-24, Higham),
// so the two differ by at most 2 n u sum|terms|; with no cancellation the norm-relative
// difference is then at most 2 n u. n is at most all rows of the EP group times k, computed per
// case below (2 n u = 3.1e-5 for 4 ranks x 32 rows x k 2). A dropped or misplaced row moves a
// gradient by ~1 / n ~ 1e-2: three orders above.
//
// PIPELINED's outputs and dx: an expert's GEMM on a chunk of its rows need not give the bits of
// the same rows inside one larger GEMM (OpenBLAS picks its micro-kernel and K-splitting by the
// row count: the Haswell kernel does, SkylakeX does not), so they are compared in norm. Forward,
// pre = x W1 + b1 (D + 1 terms) and y = act W2 + b2 (H + 1 terms) each differ by at most
// 2 (K + 1) u times the sum of |terms|; GELU's slope is at most 1.13; and for this layer's
// Gaussian weights the sum of |terms| is at most ~2.2x the result in norm (sqrt(K) 2 / pi at
// K = 12). So ||dy|| / ||y|| <= 2 u (D + H + 2) 1.13 * 2.2 < 2 u (D + H + 2) 4 = 1.0e-5. The
// backward adds its own two GEMMs (H and D terms) and the router's path reads the forward's
// expert outputs: twice that for dx, 2.1e-5. The router's gradient reads the expert outputs
// too: the same 2.1e-5. A misplaced or dropped row moves either by ~1e-1.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <cstring>
#include <ostream>
#include <string>
#include <tuple>
#include <vector>

#include "comm/mpi_communicator.h"
#include "comm/two_level_all_to_all.h"
#include "models/moe/moe_layer.h"
#include "models/nets/vision_transformer.h"
#include "tests/mpi/ep_invariance_util.h"
#include "tests/unit/grad_check.h"

namespace moe {
namespace {

int WorldRank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int WorldSize() {
  int s = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

// Members (world ranks) of a sub-group, in its rank order: everyone sends its world rank.
std::vector<int64_t> Members(SubGroup* g) {
  const std::vector<int64_t> mine(g->size(), WorldRank());
  std::vector<int64_t> all(g->size());
  g->AllToAllInt64(mine.data(), all.data(), 1);
  return all;
}

TEST(NodeSplit, TwoRanksPerNodeOnFourGivesNodes01And23) {
  if (WorldSize() != 4) GTEST_SKIP() << "needs 4 ranks";
  MpiCommunicator mpi(MPI_COMM_WORLD, 4);
  const ExpertNodeGroups g = mpi.SplitExpertGroupByNode(2);
  const int r = WorldRank();
  EXPECT_EQ(g.node->size(), 2);
  EXPECT_EQ(g.node->rank(), r % 2);
  EXPECT_EQ(g.cross->size(), 2);
  EXPECT_EQ(g.cross->rank(), r / 2);
  const int64_t first = r / 2 * 2;
  EXPECT_EQ(Members(g.node), (std::vector<int64_t>{first, first + 1}));
  EXPECT_EQ(Members(g.cross), (std::vector<int64_t>{r % 2, r % 2 + 2}));
  // Made once: the same groups come back.
  EXPECT_EQ(mpi.SplitExpertGroupByNode(2).node, g.node);
}

TEST(NodeSplit, EachExpertGroupSplitsOnItsOwn) {
  if (WorldSize() != 4) GTEST_SKIP() << "needs 4 ranks";
  MpiCommunicator mpi(MPI_COMM_WORLD, 2);  // EP groups {0,1} and {2,3}
  const ExpertNodeGroups one = mpi.SplitExpertGroupByNode(2);
  EXPECT_EQ(one.node->size(), 2);
  EXPECT_EQ(one.cross->size(), 1);
  const ExpertNodeGroups single = mpi.SplitExpertGroupByNode(1);
  EXPECT_EQ(single.node->size(), 1);
  EXPECT_EQ(single.cross->size(), 2);
  EXPECT_EQ(Members(single.cross), (std::vector<int64_t>{WorldRank() / 2 * 2,
                                                        WorldRank() / 2 * 2 + 1}));
}

// Uneven counts (0 included) from every rank to every rank; values name (source, dest, index).
TEST(TwoLevelAllToAll, DeliversExactlyWhatTheFlatExchangeDoes) {
  if (WorldSize() != 4) GTEST_SKIP() << "needs 4 ranks";
  MpiCommunicator mpi(MPI_COMM_WORLD, 4);
  const int me = WorldRank(), P = 4;
  auto count = [](int src, int dst) { return int64_t{(src * 7 + dst * 3) % 5}; };
  std::vector<int64_t> sc(P), rc(P);
  std::vector<float> send;
  for (int q = 0; q < P; ++q) {
    sc[q] = count(me, q);
    rc[q] = count(q, me);
    for (int64_t i = 0; i < sc[q]; ++i) send.push_back(1000.f * me + 100.f * q + i + 0.25f);
  }
  int64_t total = 0;
  for (int64_t c : rc) total += c;
  std::vector<float> flat(total), two(total);
  mpi.AllToAllV(send.data(), sc, flat.data(), rc, GroupKind::kExpert);
  for (int rpn : {1, 2, 4}) {
    std::fill(two.begin(), two.end(), -1.f);
    TwoLevelAllToAllV(mpi.SplitExpertGroupByNode(rpn), send.data(), sc, two.data(), rc);
    EXPECT_EQ(flat, two) << "ranks_per_node " << rpn;
  }
}

struct LayerCase {
  const char* name;
  RoutingRule rule;
  double capacity_factor;
  bool dropless;
  bool expect_drops;
};

void PrintTo(const LayerCase& c, std::ostream* os) { *os << c.name; }

MoeLayerOptions OptionsFor(const LayerCase& c) {
  MoeLayerOptions o;
  o.dim = 8;
  o.hidden = 12;
  o.num_experts = 8;
  o.top_k = 2;
  o.group_tokens = 8;
  o.rule = c.rule;
  o.capacity_factor_train = c.capacity_factor;
  o.dropless = c.dropless;
  o.switch_weight = 0.01f;
  return o;
}

constexpr int64_t kGroupsPerRank = 4;

struct LayerResult {
  Tensor y, dx;
  std::vector<Tensor> grads;
  std::vector<bool> is_expert;
  int64_t dropped = 0;
};

LayerResult RunLayer(const LayerCase& c, Communicator* comm, const DispatcherOptions& d) {
  const MoeLayerOptions o = OptionsFor(c);
  MoeLayer layer("moe", o, comm, /*seed=*/11);
  layer.SetDispatcherOptions(d);
  Parameter* router = layer.Parameters()[0];
  for (int64_t i = 0; i < router->value.numel(); ++i) router->value.at(i) *= 20.f;
  MoeStepContext ctx;
  ctx.training = true;
  ctx.step = 2;
  ctx.first_global_group = WorldRank() * kGroupsPerRank;
  ctx.num_global_groups = WorldSize() * kGroupsPerRank;
  layer.SetStepContext(ctx);
  const int64_t rows = kGroupsPerRank * o.group_tokens;
  const Tensor x = testing::RandomTensor({rows, o.dim}, 100 + WorldRank());
  const Tensor probe = testing::RandomTensor({rows, o.dim}, 200 + WorldRank());
  for (Parameter* p : layer.Parameters()) p->grad.Zero();
  LayerResult r;
  r.y = layer.Forward(x);
  r.dropped = layer.metrics().dropped;
  r.dx = layer.Backward(probe);
  for (Parameter* p : layer.Parameters()) {
    r.grads.push_back(p->grad.Clone());
    r.is_expert.push_back(p->is_expert());
  }
  return r;
}

bool SameBits(const Tensor& a, const Tensor& b) {
  return a.numel() == b.numel() &&
         std::memcmp(a.data(), b.data(), a.numel() * sizeof(float)) == 0;
}

class DispatcherLayerTest
    : public ::testing::TestWithParam<std::tuple<LayerCase, int /*ep_size*/>> {};

TEST_P(DispatcherLayerTest, SameAsFlat) {
  const LayerCase c = std::get<0>(GetParam());
  const int ep = std::get<1>(GetParam());
  if (WorldSize() % ep != 0) GTEST_SKIP() << "world vs ep_size " << ep;
  MpiCommunicator mpi(MPI_COMM_WORLD, ep);
  const LayerResult flat = RunLayer(c, &mpi, DispatcherOptions{});
  // n: every row of the EP group, k choices each, could reach one expert.
  const double n = double{kGroupsPerRank} * OptionsFor(c).group_tokens * ep * 2;
  const double u = std::ldexp(1.0, -24), tolerance = 2 * n * u;
  const MoeLayerOptions o = OptionsFor(c);
  const double y_tolerance = 2 * u * (o.dim + o.hidden + 2) * 4, dx_tolerance = 2 * y_tolerance;
  struct Variant {
    DispatcherOptions options;
    bool exact;
  };
  const std::vector<Variant> variants = {
      {{DispatcherKind::kHierarchical, 2, 2}, true},
      {{DispatcherKind::kHierarchical, 1, 2}, true},
      {{DispatcherKind::kPipelined, 0, 2}, false},
      {{DispatcherKind::kPipelined, 0, 3}, false},
  };
  for (const Variant& v : variants) {
    const std::string what = std::string(DispatcherKindName(v.options.kind)) + " rpn " +
                             std::to_string(v.options.ranks_per_node) + " chunks " +
                             std::to_string(v.options.pipeline_chunks);
    const LayerResult got = RunLayer(c, &mpi, v.options);
    EXPECT_EQ(got.dropped, flat.dropped) << what;
    ASSERT_EQ(got.grads.size(), flat.grads.size());
    if (v.exact) {
      EXPECT_TRUE(SameBits(got.y, flat.y)) << what << ": layer output differs";
      EXPECT_TRUE(SameBits(got.dx, flat.dx)) << what << ": dx differs";
      for (size_t i = 0; i < got.grads.size(); ++i)
        EXPECT_TRUE(SameBits(got.grads[i], flat.grads[i])) << what << ": gradient " << i;
      continue;
    }
    EXPECT_LE(ep_invariance::TensorRelDiff(got.y, flat.y), y_tolerance) << what << ": output";
    EXPECT_LE(ep_invariance::TensorRelDiff(got.dx, flat.dx), dx_tolerance) << what << ": dx";
    for (size_t i = 0; i < got.grads.size(); ++i) {
      EXPECT_LE(ep_invariance::TensorRelDiff(got.grads[i], flat.grads[i]),
                got.is_expert[i] ? tolerance : dx_tolerance)
          << what << ": gradient " << i << (got.is_expert[i] ? " (expert)" : " (router)");
    }
  }
  if (c.expect_drops) {
    double d = static_cast<double>(flat.dropped);
    mpi.AllReduceSum(&d, 1, GroupKind::kWorld);
    EXPECT_GT(d, 0) << "this case must drop tokens";
  }
}

const LayerCase kCases[] = {
    {"TopKDrops", RoutingRule::kTokenTopK, 0.5, false, true},
    {"TopKDropless", RoutingRule::kTokenTopK, 1.0, true, false},
    {"ExpertChoice", RoutingRule::kExpertChoice, 1.0, false, false},
};

INSTANTIATE_TEST_SUITE_P(
    Layers, DispatcherLayerTest, ::testing::Combine(::testing::ValuesIn(kCases),
                                                    ::testing::Values(4, 2)),
    [](const ::testing::TestParamInfo<DispatcherLayerTest::ParamType>& info) {
      return std::string(std::get<0>(info.param).name) + "Ep" +
             std::to_string(std::get<1>(info.param));
    });

// Training steps through the whole model against the one-rank FLAT reference.
void WithDispatcher(proto::TrainConfig* c, proto::ParallelConfig::Dispatcher kind, int rpn,
                    int chunks) {
  c->mutable_parallel()->set_dispatcher(kind);
  c->mutable_parallel()->set_ranks_per_node(rpn);
  c->mutable_parallel()->set_pipeline_chunks(chunks);
}

void ExpectSessionMatchesFlat(int ep, proto::ParallelConfig::Dispatcher kind, int rpn,
                              int chunks, bool dropless) {
  if (WorldSize() % ep != 0) GTEST_SKIP() << "world vs ep_size " << ep;
  using ep_invariance::kBatchPerRank;
  proto::TrainConfig dist = ep_invariance::SmallVmoe(ep, kBatchPerRank);
  proto::TrainConfig ref = ep_invariance::SmallVmoe(1, kBatchPerRank * WorldSize());
  dist.mutable_model()->mutable_moe()->set_dropless(dropless);
  ref.mutable_model()->mutable_moe()->set_dropless(dropless);
  WithDispatcher(&dist, kind, rpn, chunks);
  ep_invariance::RunEpInvariance(ep, dist, ref, ep_invariance::SingleTaskBatches(),
                                 /*expect_drops=*/!dropless);
}

TEST(DispatcherSession, HierarchicalEp4) {
  ExpectSessionMatchesFlat(4, proto::ParallelConfig::HIERARCHICAL, 2, 2, false);
}
TEST(DispatcherSession, HierarchicalEp2Dp2Dropless) {
  ExpectSessionMatchesFlat(2, proto::ParallelConfig::HIERARCHICAL, 2, 2, true);
}
TEST(DispatcherSession, PipelinedEp4ThreeChunks) {
  ExpectSessionMatchesFlat(4, proto::ParallelConfig::PIPELINED, 0, 3, false);
}
TEST(DispatcherSession, PipelinedEp2Dp2Dropless) {
  ExpectSessionMatchesFlat(2, proto::ParallelConfig::PIPELINED, 0, 2, true);
}

}  // namespace
}  // namespace moe
