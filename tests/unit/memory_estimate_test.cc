// The memory estimate against what the trainer really allocates: parameter counts of a built
// TrainingSession (every shipped config, one rank and a 4-rank expert shard), the capacity
// buffer rows the MoE layers report after a real training step and evaluation, and the exact
// allocation size of the capacity_factor_train: 1e9 run that used to fail without naming a field.
#include "launcher/memory_estimate.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <tuple>
#include <utility>
#include <vector>

#include "comm/self_communicator.h"
#include "launcher/config.h"
#include "launcher/training_session.h"

namespace moe {
namespace {

const std::string kSrc = MOE_EP_SOURCE_DIR;
const char* const kConfigs[] = {"vit_tiny",
                                "vmoe_tiny",
                                "mixer_tiny",
                                "sparse_mlp_tiny",
                                "cnn_tiny",
                                "pmoe_tiny",
                                "pmoe_two_phase",
                                "cnn_full",
                                "pmoe_full",
                                "mobile_vmoe_tiny",
                                "conditional_dense_tiny",
                                "conditional_moe_tiny"};

proto::TrainConfig Load(const std::string& name, const std::string& overrides = "") {
  proto::TrainConfig c;
  std::string err;
  EXPECT_TRUE(LoadTrainConfig(kSrc + "/launcher/configs/" + name + ".pbtxt", overrides, &c, &err))
      << err;
  auto* moe = c.mutable_model()->mutable_moe();
  if (!moe->superclass_file().empty())
    moe->set_superclass_file(kSrc + "/" + moe->superclass_file());
  return c;
}

// Reports the group sizes of rank 0 of a `world`-rank job with expert groups of `ep`, so a net
// is built with the expert shard that rank holds. Building never communicates.
class ShapeOnlyCommunicator : public SelfCommunicator {
 public:
  ShapeOnlyCommunicator(int world, int ep) : world_(world), ep_(ep) {}
  int Rank(GroupKind) const override { return 0; }
  int Size(GroupKind g) const override {
    return g == GroupKind::kWorld ? world_ : g == GroupKind::kExpert ? ep_ : world_ / ep_;
  }

 private:
  int world_, ep_;
};

void ExpectParameterCountsMatch(const proto::TrainConfig& unresolved, int world,
                                const std::string& what) {
  proto::TrainConfig c = unresolved;
  ResolveWorldSizeFields(world, &c);  // `ep_size: 0` is the world
  ShapeOnlyCommunicator comm(world, c.parallel().ep_size());
  TrainingSession session(c, &comm, nullptr);
  double dense = 0, expert = 0;
  for (Parameter* p : session.Parameters()) (p->is_expert() ? expert : dense) += p->value.numel();
  const MemoryEstimate est = EstimateRankMemory(c, world);
  EXPECT_EQ(est.dense_params, dense) << what;
  EXPECT_EQ(est.expert_params, expert) << what;
  EXPECT_EQ(est.parameter_bytes, 4 * (dense + expert)) << what;
}

TEST(MemoryEstimate, ParameterCountsMatchBuiltNets) {
  for (const char* name : kConfigs) {
    ExpectParameterCountsMatch(Load(name, "parallel { ep_size: 1 }"), 1,
                               std::string(name) + " world 1");
    ExpectParameterCountsMatch(Load(name, "parallel { ep_size: 4 }"), 4,
                               std::string(name) + " EP 4");
  }
}

TEST(MemoryEstimate, ParameterCountsFollowEveryPlacementAndVariant) {
  for (const std::string& o : {"model { moe { placement: LAST_N last_n: 1 } }",
                               "model { num_layers: 6 moe { placement: LAST_BLOCKS last_n: 3 } }",
                               "model { moe { expert_hidden_dim: 48 routing: EXPERT_CHOICE } }"})
    ExpectParameterCountsMatch(Load("vmoe_tiny", o), 4, "vmoe_tiny " + o);
  for (const std::string& o :
       {"model { mixer { re_represent: false } }",
        "model { mixer { re_represent_both: true channel_expert_hidden_dim: 40 } }"})
    ExpectParameterCountsMatch(Load("sparse_mlp_tiny", o), 4, "sparse_mlp_tiny " + o);
  for (const std::string& o : {"model { conditional { moe_in_attention: false } }",
                               "model { conditional { routing_level: TOKEN } }",
                               "model { conditional { routing_level: CONTEXT } }"})
    ExpectParameterCountsMatch(Load("conditional_moe_tiny", o), 4, "conditional_moe_tiny " + o);
}

// (dim, hidden, rows) of every MoE layer, sorted, from the estimate's shapes.
using LayerRows = std::vector<std::tuple<int, int, double>>;
LayerRows EstimatedRows(const MemoryEstimate& est, bool train) {
  LayerRows out;
  for (const MoeBufferEstimate& b : est.moe_layers)
    for (int i = 0; i < static_cast<int>(b.count); ++i)
      out.emplace_back(b.dim, b.hidden, train ? b.rows_train : b.rows_eval);
  std::sort(out.begin(), out.end());
  return out;
}
// What the layers allocated: capacity slots, or (dropless) the rows they kept, all of them.
LayerRows ReportedRows(TrainingSession* session) {
  LayerRows out;
  for (MoeLayer* m : session->net().moe_layers()) {
    double rows = static_cast<double>(m->metrics().capacity_slots);
    if (m->options().dropless) {
      rows = 0;
      for (int64_t n : m->metrics().tokens_per_expert) rows += static_cast<double>(n);
    }
    out.emplace_back(m->options().dim, m->options().hidden, rows);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// One real training step and one evaluation on one rank: the layers report the capacity slots
// they allocated (C x E x groups rows), which the estimate must predict exactly.
TEST(MemoryEstimate, BufferRowsMatchWhatTheLayersAllocate) {
  const std::pair<const char*, const char*> cases[] = {
      {"vmoe_tiny", ""},
      {"vmoe_tiny",
       "model { moe { routing: EXPERT_CHOICE capacity_rounding: CEIL_MULTIPLE_OF_4 } }"},
      {"vmoe_tiny", "model { moe { dropless: true } }"},
      {"sparse_mlp_tiny", ""},
      {"pmoe_tiny", ""},
      {"mobile_vmoe_tiny", ""},  // dropless
      {"mobile_vmoe_tiny", "model { moe { dropless: false group_size_images: 8 } }"}};
  for (const auto& [name, extra] : cases) {
    const proto::TrainConfig c =
        Load(name, std::string("parallel { ep_size: 1 } model { moe { capacity_factor_train: 1.3 "
                               "capacity_factor_eval: 2.1 } } ") +
                       extra);
    SelfCommunicator comm;
    TrainingSession session(c, &comm, nullptr);
    const int64_t b = c.data().batch_per_rank();
    Tensor images = Tensor::Zeros({b, 784});
    for (int64_t i = 0; i < images.numel(); ++i)
      images.at(i) = static_cast<float>((i * 7919) % 255) / 255.f;
    std::vector<int> labels(b);
    for (int64_t i = 0; i < b; ++i) labels[i] = static_cast<int>(i % 10);
    const MemoryEstimate est = EstimateRankMemory(c, 1);
    session.TrainStep(0, images, labels);
    EXPECT_EQ(ReportedRows(&session), EstimatedRows(est, /*train=*/true)) << name << " " << extra;
    int64_t correct = 0;
    double loss = 0;
    session.Evaluate(images, labels, b, &correct, &loss);
    EXPECT_EQ(ReportedRows(&session), EstimatedRows(est, /*train=*/false)) << name << " " << extra;
  }
}

// The run from the issue: 4 ranks, EP 4, capacity_factor_train 1e9 failed with "host allocation
// of 262143973785600 bytes failed" (the first send buffer: rows x dim floats).
TEST(MemoryEstimate, HugeCapacityFactorMatchesTheFailedAllocation) {
  const proto::TrainConfig c = Load("vmoe_tiny", "model { moe { capacity_factor_train: 1e9 } }");
  const MemoryEstimate est = EstimateRankMemory(c, 4);
  ASSERT_EQ(est.moe_layers.size(), 1u);
  EXPECT_EQ(est.moe_layers[0].rows_train * est.moe_layers[0].dim * 4, 262143973785600.0);
  EXPECT_GT(est.moe_buffer_bytes, 262143973785600.0);
}

TEST(MemoryEstimate, RefusalNamesTheFieldThatMakesItBig) {
  const double host = 22.0 * (1ull << 30);
  const std::string cap = CheckMemoryFits(
      Load("vmoe_tiny", "model { moe { capacity_factor_train: 1e9 } }"), 4, 4, host);
  EXPECT_EQ(cap.rfind("config error: model.moe.capacity_factor_train=1e+09: ", 0), 0u) << cap;
  EXPECT_NE(cap.find("PiB"), std::string::npos) << cap;
  EXPECT_NE(cap.find("22 GiB available for its 4 ranks"), std::string::npos) << cap;
  EXPECT_NE(cap.find("at its default (1.05)"), std::string::npos) << cap;
  const std::string experts =
      CheckMemoryFits(Load("vmoe_tiny", "model { moe { num_experts: 100000 } }"), 4, 4, host);
  EXPECT_EQ(experts.rfind("config error: model.moe.num_experts=100000: ", 0), 0u) << experts;
  const std::string width =
      CheckMemoryFits(Load("vit_tiny", "model { hidden_dim: 65536 num_heads: 1 }"), 4, 4, host);
  EXPECT_EQ(width.rfind("config error: model.hidden_dim=65536: ", 0), 0u) << width;
}

TEST(MemoryEstimate, ShippedConfigsFitFourRanksInFourGiB) {
  for (const char* name : kConfigs) {
    const proto::TrainConfig c = Load(name);
    EXPECT_EQ(CheckMemoryFits(c, 4, 4, 4.0 * (1ull << 30)), "") << name;
    EXPECT_LT(EstimateRankMemory(c, 4).total_bytes(), 512.0 * (1 << 20)) << name;
  }
}

TEST(MemoryEstimate, FormatBytes) {
  EXPECT_EQ(FormatBytes(512), "512 B");
  EXPECT_EQ(FormatBytes(1536), "1.5 KiB");
  EXPECT_EQ(FormatBytes(22.0 * (1ull << 30)), "22 GiB");
  EXPECT_EQ(FormatBytes(262143973785600.0), "238 TiB");
}

TEST(MemoryEstimate, AvailableMemoryIsPositive) { EXPECT_GT(AvailableHostMemoryBytes(), 0); }

}  // namespace
}  // namespace moe
