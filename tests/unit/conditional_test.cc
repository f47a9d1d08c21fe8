// The conditional MoE family (Uni-Perceiver-MoE): case 11 of models/moe/README.md through the
// net (equal attribute vectors give equal experts and gates, top-2 gates sum to 1), the routing
// levels' attribute masks, merged expert weights against the per-expert path, finite-difference
// checks of the routed linear pair and of the whole net (attribute routers included), and the
// multi-task data: index-based task/modality assignment, the second view, the super-class map.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <tuple>

#include "comm/self_communicator.h"
#include "launcher/config.h"
#include "models/nets/multitask.h"
#include "models/moe/moe_linear_pair.h"
#include "models/moe/rule_selections.h"
#include "models/nets/conditional_vit.h"
#include "models/layers/gelu.h"
#include "models/nets/families.h"
#include "tests/unit/grad_check.h"

namespace moe {
namespace {

using testing::Dot;
using testing::ExpectGradientsMatch;
using testing::GradCheckOptions;
using testing::RandomTensor;
using Level = proto::ConditionalConfig;
using RouterInput = MoeLinearPairOptions::RouterInput;

// ---------------------------------------------------------------------------------------------
// Attribute bits and routing levels.

TEST(ConditionalAttributes, BitsAndLevelMasks) {
  EXPECT_EQ(TokenAttributeBits(0, 0), 0x15u);  // modality 0, task 0, patch token
  EXPECT_EQ(TokenAttributeBits(1, 0), 0x19u);
  EXPECT_EQ(TokenAttributeBits(0, 1), 0x16u);
  EXPECT_EQ(TokenAttributeBits(1, 1), 0x1au);
  EXPECT_EQ(TokenAttributeBits(1, 1, /*task_token=*/true), 0x2au);  // bit 5 instead of bit 4
  EXPECT_EQ(RoutingLevelMask(Level::MODALITY), 0x03u);
  EXPECT_EQ(RoutingLevelMask(Level::TASK), 0x0cu);
  EXPECT_EQ(RoutingLevelMask(Level::ATTRIBUTE), 0xffu);
  EXPECT_EQ(RoutingLevelMask(Level::TOKEN), 0u);
  EXPECT_EQ(RoutingLevelMask(Level::CONTEXT), 0u);
  // Each level keeps exactly the distinctions it names.
  std::set<uint32_t> by_level[3];
  for (int t = 0; t < 2; ++t)
    for (int m = 0; m < 2; ++m) {
      by_level[0].insert(TokenAttributeBits(t, m) & RoutingLevelMask(Level::MODALITY));
      by_level[1].insert(TokenAttributeBits(t, m) & RoutingLevelMask(Level::TASK));
      by_level[2].insert(TokenAttributeBits(t, m) & RoutingLevelMask(Level::ATTRIBUTE));
    }
  EXPECT_EQ(by_level[0].size(), 2u);
  EXPECT_EQ(by_level[1].size(), 2u);
  EXPECT_EQ(by_level[2].size(), 4u);
  EXPECT_EQ(RoutingRuleForLevel(Level::TOKEN), RoutingRule::kTokenTopK);
  EXPECT_EQ(RoutingRuleForLevel(Level::CONTEXT), RoutingRule::kPerImage);
  for (auto l : {Level::MODALITY, Level::TASK, Level::ATTRIBUTE})
    EXPECT_EQ(RoutingRuleForLevel(l), RoutingRule::kAttribute);
}

// A tiny conditional net: 28x28 images, 7x7 patches (16 tokens), blocks {0, 2} MoE.
// The FFN is the routed pair by default; MOE_LAYER adds its importance and load losses.
proto::TrainConfig TinyConfig(Level::RoutingLevel level, bool attention, bool use_moe = true,
                              Level::FfnForm form = Level::ROUTED_PAIR) {
  proto::TrainConfig c;
  c.set_seed(5);
  auto* m = c.mutable_model();
  m->set_family("conditional");
  m->set_hidden_dim(8);
  m->set_mlp_dim(16);
  m->set_num_heads(2);
  m->set_num_layers(3);
  m->set_use_moe(use_moe);
  auto* moe = m->mutable_moe();
  moe->set_num_experts(4);
  moe->set_top_k(2);
  moe->set_group_size_images(2);
  moe->set_dropless(true);
  if (form == Level::MOE_LAYER) {
    moe->set_importance_loss_weight(0.05f);
    moe->set_load_loss_weight(0.05f);
  }
  m->mutable_conditional()->set_ffn_form(form);
  m->mutable_conditional()->set_routing_level(level);
  m->mutable_conditional()->set_moe_in_attention(attention);
  c.mutable_data()->set_batch_per_rank(4);
  return c;
}

MoeStepContext Context(bool training, int64_t groups) {
  MoeStepContext ctx;
  ctx.training = training;
  ctx.step = 3;
  ctx.first_global_group = 1;
  ctx.num_global_groups = groups;
  ctx.image_loss_scale = 0.25f;
  return ctx;
}

// The 8-image task/modality pattern the net tests use, and one forward pass with it.
const std::vector<int> kTasks8 = {0, 1, 0, 1, 1, 0, 1, 0};
const std::vector<int> kModalities8 = {0, 0, 1, 1, 0, 0, 1, 1};
Tensor ForwardWithTasks(ConditionalVit* net, bool training, const Tensor& images) {
  BatchInfo info;
  info.task = &kTasks8;
  info.modality = &kModalities8;
  net->SetBatchInfo(info);
  net->SetMoeContext(Context(training, 4));
  return net->Forward(images);
}

// Per row: expert -> gate of the kept assignments of an MoE layer's last Forward.
std::vector<std::map<int, float>> RowChoices(const MoeLayer& m, int64_t rows) {
  std::vector<std::map<int, float>> out(rows);
  m.ForEachKeptAssignment([&out](int64_t row, int e, float g) { out[row][e] = g; });
  return out;
}

// Case 11 through the net with the MOE_LAYER FFN, at evaluation: every (task, modality) appears
// twice; rows with equal attribute vectors take equal experts and gates (FFN MoE and routed
// attention), each row's two gates sum to 1, and the levels collapse exactly the attributes they
// mask out. (In training that FFN's noise is per token; the routed pair's is per image, below.)
class ConditionalCase11 : public ::testing::TestWithParam<Level::RoutingLevel> {};

TEST_P(ConditionalCase11, EqualAttributesGiveEqualExpertsAndGates) {
  const Level::RoutingLevel level = GetParam();
  SelfCommunicator comm;
  proto::TrainConfig c = TinyConfig(level, /*attention=*/true, true, Level::MOE_LAYER);
  c.mutable_data()->set_batch_per_rank(8);
  ConditionalVit net(c.model(), &comm, c.seed());
  const std::vector<int>& task = kTasks8;
  const std::vector<int>& modality = kModalities8;
  const Tensor images = RandomTensor({8, 784}, 21);
  const Tensor logits = ForwardWithTasks(&net, /*training=*/false, images);
  EXPECT_EQ(logits.dim(1), 14);
  const int64_t T = net.tokens_per_image(), rows = 8 * T;
  const uint32_t mask = RoutingLevelMask(level);
  ASSERT_EQ(net.moe_layers().size(), 2u);
  ASSERT_EQ(net.attention_moe().size(), 2u);
  for (size_t l = 0; l < 2; ++l) {
    const auto ffn = RowChoices(*net.moe_layers()[l], rows);
    const std::vector<int> ae = net.attention_moe()[l]->RowExperts();
    const std::vector<float> ag = net.attention_moe()[l]->RowGates();
    std::map<uint32_t, std::map<int, float>> ffn_of;
    std::map<uint32_t, std::vector<float>> attn_of;
    for (int64_t t = 0; t < rows; ++t) {
      ASSERT_EQ(ffn[t].size(), 2u) << "dropless: both choices kept, row " << t;
      double s = 0;
      for (const auto& [e, g] : ffn[t]) s += g;
      EXPECT_NEAR(s, 1.0, 1e-6) << "FFN gates of row " << t;
      EXPECT_NEAR(ag[t * 2] + ag[t * 2 + 1], 1.0, 1e-6) << "attention gates of row " << t;
      const uint32_t key = TokenAttributeBits(task[t / T], modality[t / T], t % T == 0) & mask;
      auto [it, fresh] = ffn_of.emplace(key, ffn[t]);
      if (!fresh) EXPECT_EQ(it->second, ffn[t]) << "FFN layer " << l << " row " << t;
      const std::vector<float> a = {static_cast<float>(ae[t * 2]), static_cast<float>(ae[t * 2 + 1]),
                                    ag[t * 2], ag[t * 2 + 1]};
      auto [at, afresh] = attn_of.emplace(key, a);
      if (!afresh) EXPECT_EQ(at->second, a) << "attention layer " << l << " row " << t;
    }
    // ATTRIBUTE also tells the task token (token 0) from the patches: 4 x 2 vectors.
    EXPECT_EQ(ffn_of.size(), level == Level::ATTRIBUTE ? 8u : 2u);
    // Eval, shared decisions: the merged path runs one GEMM per distinct attribute vector (with
    // two segments per image, ATTRIBUTE takes the per-expert path: 0 merged groups).
    EXPECT_LE(net.attention_moe()[l]->merged_groups(), level == Level::ATTRIBUTE ? 0 : 2);
  }
}

INSTANTIATE_TEST_SUITE_P(Levels, ConditionalCase11,
                         ::testing::Values(Level::MODALITY, Level::TASK, Level::ATTRIBUTE),
                         [](const ::testing::TestParamInfo<Level::RoutingLevel>& i) {
                           return Level::RoutingLevel_Name(i.param);
                         });

// Per row: the k (expert, gate) pairs of a routed pair's last forward, flattened.
std::vector<std::vector<float>> PairRows(const MoeLinearPair& p) {
  const std::vector<int> e = p.RowExperts();
  const std::vector<float> g = p.RowGates();
  const int k = p.options().top_k;
  std::vector<std::vector<float>> out(e.size() / k);
  for (size_t t = 0; t < out.size(); ++t)
    for (int r = 0; r < k; ++r) {
      out[t].push_back(static_cast<float>(e[t * k + r]));
      out[t].push_back(g[t * k + r]);
    }
  return out;
}

// Across images the same attribute key is a different row of the router's GEMMs (Linear over
// the A = 8 attribute bits, then LayerNorm, then the logits over D = 8), and OpenBLAS need not
// give a row the same bits at another position (its micro-kernel depends on the rows left): the
// experts must match exactly, the gates within rounding. Each sum's two orders differ by at most
// 2 K u of its |terms| (u = 2^-24), K = A + 1 and D; a factor 4 covers the |terms| over the
// logits' size (Gaussian weights, LayerNorm's 1 / sigma of order 1 here); a top-2 gate's slope
// in the logit difference is at most 1/4 <= 1. Within an image the key is one decision: exact.
constexpr double kAcrossImagesGateTolerance = 2 * 5.9604645e-08 * (8 + 1 + 8) * 4;

void ExpectSameExpertsAndGates(const std::vector<float>& a, const std::vector<float>& b,
                               double gate_tolerance, int64_t row) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); i += 2) {
    EXPECT_EQ(a[i], b[i]) << "eval, row " << row << ": expert of choice " << i / 2;
    EXPECT_NEAR(a[i + 1], b[i + 1], gate_tolerance) << "eval, row " << row << ": gate " << i / 2;
  }
}

// Case 11 with the default routed-pair FFN in TRAINING, router noise on (std noise_scale / E =
// 0.125, as large as the logits' spread at init): the noise is drawn per (image, expert), so all
// tokens of an image -- which carry equal attributes -- take one decision in the FFN and in the
// attention; each row's gates sum to 1. Across images the noise differs, so equality across
// images is the evaluation check (noise off), which must collapse to one decision per
// attribute vector.
class ConditionalPairCase11 : public ::testing::TestWithParam<Level::RoutingLevel> {};

TEST_P(ConditionalPairCase11, EqualAttributesGiveEqualExpertsAndGatesInTraining) {
  const Level::RoutingLevel level = GetParam();
  SelfCommunicator comm;
  proto::TrainConfig c = TinyConfig(level, /*attention=*/true);
  c.mutable_data()->set_batch_per_rank(8);
  ASSERT_GT(c.model().moe().router_noise_scale(), 0.f);
  ConditionalVit net(c.model(), &comm, c.seed());
  const std::vector<int>& task = kTasks8;
  const std::vector<int>& modality = kModalities8;
  const Tensor images = RandomTensor({8, 784}, 21);
  const int64_t T = net.tokens_per_image(), rows = 8 * T;
  const uint32_t mask = RoutingLevelMask(level);
  for (bool training : {true, false}) {
    ForwardWithTasks(&net, training, images);
    ASSERT_TRUE(net.moe_layers().empty());
    ASSERT_EQ(net.ffn_moe().size(), 2u);
    for (size_t l = 0; l < 2; ++l)
      for (const MoeLinearPair* p : {net.ffn_moe()[l], net.attention_moe()[l]}) {
        const auto choice = PairRows(*p);
        std::map<std::pair<int64_t, uint32_t>, std::vector<float>> in_image;
        std::map<uint32_t, std::vector<float>> across;
        for (int64_t t = 0; t < rows; ++t) {
          EXPECT_NEAR(choice[t][1] + choice[t][3], 1.0, 1e-6) << "gates of row " << t;
          const uint32_t key =
              TokenAttributeBits(task[t / T], modality[t / T], /*task_token=*/t % T == 0) & mask;
          auto [it, fresh] = in_image.emplace(std::make_pair(t / T, key), choice[t]);
          if (!fresh) EXPECT_EQ(it->second, choice[t]) << "layer " << l << " row " << t;
          auto [at, afresh] = across.emplace(key, choice[t]);
          if (!afresh && !training)
            ExpectSameExpertsAndGates(at->second, choice[t], kAcrossImagesGateTolerance, t);
        }
        if (!training) EXPECT_LE(p->merged_groups(), level == Level::ATTRIBUTE ? 0 : 2);
      }
  }
}

INSTANTIATE_TEST_SUITE_P(Levels, ConditionalPairCase11,
                         ::testing::Values(Level::MODALITY, Level::TASK, Level::ATTRIBUTE),
                         [](const ::testing::TestParamInfo<Level::RoutingLevel>& i) {
                           return Level::RoutingLevel_Name(i.param);
                         });

// The pair FFN is y = (sum_g W2_e) GELU((sum_g W1_e) x + b1) + b2 with the merged biases: rebuilt
// here from the pair's own weights and decisions for one image and compared with the block's
// FFN output through the per-expert path (merge_weights off), which computes the same thing as
// gated sums of expert outputs.
TEST(ConditionalNet, PairFfnMergedEqualsPerExpert) {
  MoeLinearPairOptions o;
  o.in1 = 6;
  o.out1 = 10;
  o.in2 = 10;
  o.out2 = 6;
  o.num_experts = 4;
  o.top_k = 2;
  o.tokens_per_image = 3;
  o.router_input = RouterInput::kImageMean;
  MoeLinearPairOptions per_expert = o;
  per_expert.merge_weights = false;
  MoeLinearPair merged("ffn", o, 9), split("ffn", per_expert, 9);
  const Tensor x = RandomTensor({6, 6}, 4);
  Tensor ym, ys;
  for (MoeLinearPair* p : {&merged, &split}) {
    p->SetStepContext(Context(/*training=*/true, 1));
    Gelu gelu;
    Tensor y = p->ForwardSecond(gelu.Forward(p->ForwardFirst(x)));
    (p == &merged ? ym : ys) = y;
  }
  EXPECT_GT(merged.merged_groups(), 0);
  for (int64_t i = 0; i < ym.numel(); ++i) EXPECT_NEAR(ym.at(i), ys.at(i), 1e-5) << i;
}

// Tokens whose attributes differ can route differently: with the task token, ATTRIBUTE routing
// gives every image two segments (task token, patches), each one decision in training and at
// evaluation; over the batch's 8 images x 2 pairs x 2 blocks some task token takes other experts
// than its image's patches (random routers, sharpened so that the attribute term dominates the
// noise). Without the token type in the mask (TASK) they never differ.
TEST(ConditionalNet, TaskTokenRoutesApartFromThePatches) {
  for (Level::RoutingLevel level : {Level::ATTRIBUTE, Level::TASK}) {
    SelfCommunicator comm;
    proto::TrainConfig c = TinyConfig(level, /*attention=*/true);
    c.mutable_data()->set_batch_per_rank(8);
    ConditionalVit net(c.model(), &comm, c.seed());
    for (Parameter* p : net.Parameters())
      if (p->name.find(".router.w") != std::string::npos)
        for (int64_t i = 0; i < p->value.numel(); ++i) p->value.at(i) *= 40.f;
    const int64_t T = net.tokens_per_image();
    EXPECT_EQ(T, 17) << "16 patches and the task token";
    int apart = 0;
    for (bool training : {true, false}) {
      ForwardWithTasks(&net, training, RandomTensor({8, 784}, 23));
      for (size_t l = 0; l < 2; ++l)
        for (const MoeLinearPair* p : {net.ffn_moe()[l], net.attention_moe()[l]}) {
          const auto choice = PairRows(*p);
          for (int64_t i = 0; i < 8; ++i) {
            for (int64_t t = 2; t < T; ++t) EXPECT_EQ(choice[i * T + t], choice[i * T + 1]);
            apart += choice[i * T] != choice[i * T + 1];
          }
          EXPECT_EQ(p->one_decision_per_image(), level != Level::ATTRIBUTE);
        }
    }
    if (level == Level::ATTRIBUTE) EXPECT_GT(apart, 0);
    if (level == Level::TASK) EXPECT_EQ(apart, 0);
  }
}

TEST(ConditionalNet, ContextLevelOneDecisionPerImage) {
  SelfCommunicator comm;
  proto::TrainConfig c = TinyConfig(Level::CONTEXT, /*attention=*/true);
  ConditionalVit net(c.model(), &comm, c.seed());
  net.SetMoeContext(Context(/*training=*/true, 2));
  net.Forward(RandomTensor({4, 784}, 8));
  const int64_t T = net.tokens_per_image();
  const auto ffn = PairRows(*net.ffn_moe()[0]);
  const std::vector<int> ae = net.attention_moe()[0]->RowExperts();
  for (int64_t t = 0; t < 4 * T; ++t) {
    EXPECT_EQ(ffn[t], ffn[(t / T) * T]) << "row " << t;
    EXPECT_EQ(ae[t * 2], ae[(t / T) * T * 2]) << "row " << t;
  }
}

// ---------------------------------------------------------------------------------------------
// Merged weights (case 11) and the routed linear pair.

TEST(ConditionalMergedWeights, MergedLinearEqualsGatedSum) {
  const int64_t in = 5, out = 3;
  const Tensor w1 = RandomTensor({in, out}, 1), w2 = RandomTensor({in, out}, 2);
  const Tensor x = RandomTensor({4, in}, 3);
  const float g1 = 0.7f, g2 = 0.3f;
  Tensor merged({in, out});
  MergeExpertWeights({w1.data(), w2.data()}, {g1, g2}, in * out, merged.data());
  for (int64_t r = 0; r < 4; ++r)
    for (int64_t j = 0; j < out; ++j) {
      double e1 = 0, e2 = 0, m = 0;
      for (int64_t i = 0; i < in; ++i) {
        e1 += x.at(r * in + i) * w1.at(i * out + j);
        e2 += x.at(r * in + i) * w2.at(i * out + j);
        m += x.at(r * in + i) * merged.at(i * out + j);
      }
      EXPECT_NEAR(m, g1 * e1 + g2 * e2, 1e-5);
    }
}

MoeLinearPairOptions PairOptions(RouterInput input, bool merge) {
  MoeLinearPairOptions o;
  o.in1 = 6;
  o.out1 = 5;
  o.in2 = 5;
  o.out2 = 4;
  o.num_experts = 4;
  o.top_k = 2;
  o.tokens_per_image = 3;
  o.images_per_group = 2;
  o.router_input = input;
  o.attribute_dim = input == RouterInput::kAttributes ? 4 : 0;
  o.merge_weights = merge;
  return o;
}

// Attribute rows shared within each of 4 images of 3 tokens; images 0 and 2 equal.
Tensor PairAttributes() {
  const float bits[4][4] = {{1, 0, 1, 0}, {0, 1, 1, 0}, {1, 0, 1, 0}, {0, 1, 0, 1}};
  Tensor a({12, 4});
  for (int t = 0; t < 12; ++t)
    for (int j = 0; j < 4; ++j) a.at(t * 4 + j) = bits[t / 3][j];
  return a;
}

struct PairRun {
  Tensor y2, dx;
  std::vector<Tensor> grads;
};

// Forward both layers (a tanh between them stands in for the attention), backward a probe.
PairRun RunPair(MoeLinearPair* pair, const Tensor& x, const Tensor& probe) {
  for (Parameter* p : pair->Parameters()) p->grad.Zero();
  Tensor y1 = pair->ForwardFirst(x);
  Tensor h = y1.Clone();
  for (int64_t i = 0; i < h.numel(); ++i) h.at(i) = std::tanh(h.at(i));
  PairRun r;
  r.y2 = pair->ForwardSecond(h);
  Tensor dh = pair->BackwardSecond(probe);
  for (int64_t i = 0; i < dh.numel(); ++i) dh.at(i) *= 1.f - h.at(i) * h.at(i);
  r.dx = pair->BackwardFirst(dh);
  for (Parameter* p : pair->Parameters()) r.grads.push_back(p->grad.Clone());
  return r;
}

TEST(MoeLinearPair, MergedPathEqualsPerExpertPath) {
  for (RouterInput input : {RouterInput::kImageMean, RouterInput::kAttributes}) {
    MoeLinearPair merged("pair", PairOptions(input, true), 9);
    MoeLinearPair split("pair", PairOptions(input, false), 9);
    const Tensor attrs = PairAttributes();
    MoeStepContext ctx = Context(/*training=*/true, 2);
    ctx.attributes = &attrs;
    merged.SetStepContext(ctx);
    split.SetStepContext(ctx);
    const Tensor x = RandomTensor({12, 6}, 4), probe = RandomTensor({12, 4}, 5);
    const PairRun a = RunPair(&merged, x, probe), b = RunPair(&split, x, probe);
    EXPECT_GT(merged.merged_groups(), 0);
    EXPECT_EQ(split.merged_groups(), 0);
    EXPECT_EQ(merged.RowExperts(), split.RowExperts());
    for (int64_t i = 0; i < a.y2.numel(); ++i) EXPECT_NEAR(a.y2.at(i), b.y2.at(i), 1e-5);
    for (int64_t i = 0; i < a.dx.numel(); ++i) EXPECT_NEAR(a.dx.at(i), b.dx.at(i), 1e-5);
    for (size_t p = 0; p < a.grads.size(); ++p)
      for (int64_t i = 0; i < a.grads[p].numel(); ++i)
        EXPECT_NEAR(a.grads[p].at(i), b.grads[p].at(i), 1e-5)
            << merged.Parameters()[p]->name << "[" << i << "]";
  }
}

TEST(MoeLinearPair, EqualAttributesShareTheDecisionAndTheMergedGemm) {
  MoeLinearPair pair("pair", PairOptions(RouterInput::kAttributes, true), 9);
  const Tensor attrs = PairAttributes();
  MoeStepContext ctx = Context(/*training=*/false, 2);
  ctx.attributes = &attrs;
  pair.SetStepContext(ctx);
  pair.ForwardFirst(RandomTensor({12, 6}, 4));
  const std::vector<int> e = pair.RowExperts();
  const std::vector<float> g = pair.RowGates();
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(e[0 * 2 + r], e[6 * 2 + r]);  // image 0 token 0 vs image 2 token 0
    EXPECT_EQ(g[0 * 2 + r], g[6 * 2 + r]);
  }
  EXPECT_NEAR(g[0] + g[1], 1.0, 1e-6);
  EXPECT_EQ(pair.merged_groups(), 3);  // 4 images, 3 distinct attribute vectors
}

class MoeLinearPairGradTest
    : public ::testing::TestWithParam<std::pair<RouterInput, bool>> {};

TEST_P(MoeLinearPairGradTest, MatchesFiniteDifferences) {
  const auto [input, merge] = GetParam();
  MoeLinearPair pair("pair", PairOptions(input, merge), 13);
  for (Parameter* p : pair.Parameters())
    if (p->name == "pair.router.w")
      for (int64_t i = 0; i < p->value.numel(); ++i) p->value.at(i) *= 40.f;  // O(1) logits
  const Tensor attrs = PairAttributes();
  MoeStepContext ctx = Context(/*training=*/true, 2);
  ctx.attributes = &attrs;
  pair.SetStepContext(ctx);
  Tensor x = RandomTensor({12, 6}, 4);
  const Tensor probe = RandomTensor({12, 4}, 5);
  auto objective = [&]() {
    Tensor y1 = pair.ForwardFirst(x);
    for (int64_t i = 0; i < y1.numel(); ++i) y1.at(i) = std::tanh(y1.at(i));
    return Dot(pair.ForwardSecond(y1), probe);
  };
  const PairRun r = RunPair(&pair, x, probe);
  // Float32 central differences of an O(1) objective carry ~3e-4 of rounding at this step.
  GradCheckOptions opt;
  opt.step = 2e-3f;
  opt.rel_tol = 5e-2;
  opt.abs_floor = 5e-3;
  ExpectGradientsMatch("pair.dx", &x, r.dx, objective, opt);
  const auto params = pair.Parameters();
  for (size_t i = 0; i < params.size(); ++i)
    ExpectGradientsMatch(params[i]->name, &params[i]->value, r.grads[i], objective, opt);
}

std::string PairCaseName(const ::testing::TestParamInfo<std::pair<RouterInput, bool>>& i) {
  static const char* kInput[] = {"token", "image_mean", "attributes"};
  return std::string(kInput[static_cast<int>(i.param.first)]) +
         (i.param.second ? "_merged" : "_per_expert");
}

INSTANTIATE_TEST_SUITE_P(
    Inputs, MoeLinearPairGradTest,
    ::testing::Values(std::make_pair(RouterInput::kToken, false),
                      std::make_pair(RouterInput::kImageMean, true),
                      std::make_pair(RouterInput::kImageMean, false),
                      std::make_pair(RouterInput::kAttributes, true),
                      std::make_pair(RouterInput::kAttributes, false)),
    PairCaseName);

// ---------------------------------------------------------------------------------------------
// The whole net on one rank: objective = <logits, probe> + the MoE layers' aux losses, w.r.t.
// the images and every parameter (attribute routers, routed attention, task embeddings).

class ConditionalNetGradTest
    : public ::testing::TestWithParam<std::tuple<Level::RoutingLevel, Level::FfnForm>> {};

TEST_P(ConditionalNetGradTest, MatchesFiniteDifferences) {
  SelfCommunicator comm;
  const auto [level, form] = GetParam();
  proto::TrainConfig c = TinyConfig(level, /*attention=*/true, true, form);
  // TOKEN and CONTEXT route on features, so a top-k boundary may sit within one finite-difference
  // step of some token or image mean (the objective then jumps: no gradient to compare). With
  // these images and 16 patch tokens none does; the task token's 17th token brings one within
  // reach, so these two levels run without it. Its backward does not depend on the level and is
  // checked under ATTRIBUTE, whose router inputs the perturbations cannot move.
  if (RoutingRuleForLevel(level) != RoutingRule::kAttribute)
    c.mutable_model()->mutable_conditional()->set_task_token(false);
  // MOE_LAYER: no router noise here: that FFN router draws it per token, and under attribute
  // routing the 16 tokens of an image then differ by noise alone, so some token sits within a
  // finite-difference step of a top-k flip. The noise is additive (its gradient path is the clean
  // one) and the MoE layer's noisy gradients are checked in moe_rules_test. The routed pairs
  // (ROUTED_PAIR FFN, attention) keep it: one draw per image.
  if (form == Level::MOE_LAYER && RoutingRuleForLevel(level) == RoutingRule::kAttribute) {
    c.mutable_model()->mutable_moe()->set_router_noise_scale(0.f);
    c.mutable_model()->mutable_moe()->set_load_loss_weight(0.f);  // it needs noise
  }
  ConditionalVit net(c.model(), &comm, c.seed());
  // Sharper routers, so that a finite-difference step never flips a top-k choice.
  for (Parameter* p : net.Parameters())
    if (p->name.size() > 9 && p->name.compare(p->name.size() - 9, 9, ".router.w") == 0)
      for (int64_t i = 0; i < p->value.numel(); ++i) p->value.at(i) *= 40.f;
  const std::vector<int> task = {0, 1, 1, 0}, modality = {1, 0, 1, 0};
  Tensor images = RandomTensor({4, 784}, 31);
  const Tensor probe = RandomTensor({4, 14}, 32);
  auto forward = [&]() {
    BatchInfo info;
    info.task = &task;
    info.modality = &modality;
    net.SetBatchInfo(info);
    net.SetMoeContext(Context(/*training=*/true, 2));
    return net.Forward(images);
  };
  auto objective = [&]() {
    double s = Dot(forward(), probe);
    for (MoeLayer* m : net.moe_layers()) s += m->metrics().aux_loss;
    return s;
  };
  for (Parameter* p : net.Parameters()) p->grad.Zero();
  forward();
  net.Backward(probe);
  std::vector<Tensor> grads;
  for (Parameter* p : net.Parameters()) grads.push_back(p->grad.Clone());
  GradCheckOptions opt;
  opt.step = 3e-3f;
  opt.rel_tol = 5e-2;
  opt.abs_floor = 5e-3;
  opt.max_checks_per_tensor = 12;
  const auto params = net.Parameters();
  int attribute_params = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    attribute_params += params[i]->name.find("attr_") != std::string::npos;
    ExpectGradientsMatch(params[i]->name + "#" + std::to_string(params[i]->global_expert_id),
                         &params[i]->value, grads[i], objective, opt);
  }
  if (RoutingRuleForLevel(level) == RoutingRule::kAttribute)
    EXPECT_EQ(attribute_params, 16) << "attr_proj.w/.b and attr_norm gamma/beta in 4 routers";
  EXPECT_EQ(net.ffn_moe().size(), form == Level::ROUTED_PAIR ? 2u : 0u);
  if (RoutingRuleForLevel(level) == RoutingRule::kAttribute)
    EXPECT_EQ(std::count_if(params.begin(), params.end(),
                            [](Parameter* p) { return p->name == "embed.task_token"; }),
              1);
}

INSTANTIATE_TEST_SUITE_P(
    Levels, ConditionalNetGradTest,
    ::testing::Combine(::testing::Values(Level::TOKEN, Level::CONTEXT, Level::ATTRIBUTE),
                       ::testing::Values(Level::ROUTED_PAIR, Level::MOE_LAYER)),
    [](const ::testing::TestParamInfo<std::tuple<Level::RoutingLevel, Level::FfnForm>>& i) {
      return Level::RoutingLevel_Name(std::get<0>(i.param)) + "_" +
             Level::FfnForm_Name(std::get<1>(i.param));
    });

// The released top-2 gate has no auxiliary losses: the family's MOE_LAYER FFN leaves them off
// unless the config sets them, and the routed pair refuses them (it would ignore them).
TEST(ConditionalNet, AuxLossesOffByDefault) {
  proto::TrainConfig c = TinyConfig(Level::ATTRIBUTE, true, true, Level::MOE_LAYER);
  c.mutable_model()->mutable_moe()->clear_importance_loss_weight();
  c.mutable_model()->mutable_moe()->clear_load_loss_weight();
  MoeLayerOptions o = ConditionalMoeOptions(c.model());
  EXPECT_EQ(o.importance_weight, 0.f);
  EXPECT_EQ(o.load_weight, 0.f);
  c.mutable_model()->mutable_moe()->set_importance_loss_weight(0.01f);
  EXPECT_EQ(ConditionalMoeOptions(c.model()).importance_weight, 0.01f);
  std::vector<std::string> errors;
  ValidateConditionalVitConfig(c, &errors);
  EXPECT_TRUE(errors.empty());
  c.mutable_model()->mutable_conditional()->set_ffn_form(Level::ROUTED_PAIR);
  ValidateConditionalVitConfig(c, &errors);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].find("model.moe.importance_loss_weight"), std::string::npos) << errors[0];
}

TEST(ConditionalNet, DenseBaselineSeesTheTask) {
  SelfCommunicator comm;
  const proto::TrainConfig c = TinyConfig(Level::ATTRIBUTE, false, /*use_moe=*/false);
  ConditionalVit net(c.model(), &comm, c.seed());
  EXPECT_TRUE(net.moe_layers().empty());
  const Tensor images = RandomTensor({2, 784}, 3);
  const std::vector<int> same = {0, 0}, other = {1, 1}, zero = {0, 0};
  BatchInfo a, b;
  a.task = &same;
  a.modality = &zero;
  b.task = &other;
  b.modality = &zero;
  net.SetBatchInfo(a);
  const Tensor la = net.Forward(images);
  net.SetBatchInfo(b);
  const Tensor lb = net.Forward(images);
  double diff = 0;
  for (int64_t i = 0; i < la.numel(); ++i) diff += std::abs(la.at(i) - lb.at(i));
  EXPECT_GT(diff, 0) << "the task embedding must change the dense net's output";
}

TEST(ConditionalNet, ValidatorRejectsWhatTheFamilyCannotRun) {
  proto::TrainConfig c = TinyConfig(Level::ATTRIBUTE, true);
  std::vector<std::string> errors;
  ValidateConditionalVitConfig(c, &errors);
  EXPECT_TRUE(errors.empty()) << errors.front();
  // The task token is host-only.
  c.set_device("cuda");
  ValidateConditionalVitConfig(c, &errors);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0],
            "config error: model.conditional.task_token=true: not supported on the CUDA path yet");
  errors.clear();
  // The device path runs every level's routed attention (TOKEN's on the per-expert path).
  c.mutable_model()->mutable_conditional()->set_task_token(false);
  ValidateConditionalVitConfig(c, &errors);
  EXPECT_TRUE(errors.empty()) << errors.front();
  c.mutable_model()->mutable_conditional()->set_routing_level(Level::TOKEN);
  c.mutable_model()->mutable_moe()->set_routing(proto::MoeConfig::TOKEN_TOP_K);
  c.mutable_model()->mutable_conditional()->set_num_superclasses(1);
  ValidateConditionalVitConfig(c, &errors);
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_NE(errors[0].find("num_superclasses"), std::string::npos);
  EXPECT_NE(errors[1].find("model.moe.routing"), std::string::npos);
}

TEST(ConditionalNet, ShippedConfigsAreValidOnFourRanks) {
  for (const char* name : {"conditional_dense_tiny.pbtxt", "conditional_moe_tiny.pbtxt"}) {
    proto::TrainConfig c;
    std::string err;
    ASSERT_TRUE(LoadTrainConfig(std::string(MOE_EP_SOURCE_DIR) + "/launcher/configs/" + name, "",
                                &c, &err))
        << err;
    std::string joined;
    for (const auto& e : ValidateTrainConfig(c, 4)) joined += e + "\n";
    EXPECT_EQ(joined, "") << name;
    EXPECT_EQ(c.model().family(), "conditional");
  }
}

// ---------------------------------------------------------------------------------------------
// Multi-task data.

TEST(MultiTask, AssignmentIsDeterministicAndIndexBased) {
  int coarse = 0, view2 = 0, both = 0;
  for (int64_t i = 0; i < 4000; ++i) {
    EXPECT_EQ(SampleTask(7, i), SampleTask(7, i));
    coarse += SampleTask(7, i);
    view2 += SampleModality(7, i);
    both += SampleTask(7, i) * SampleModality(7, i);
  }
  EXPECT_NEAR(coarse / 4000.0, 0.5, 0.05);
  EXPECT_NEAR(view2 / 4000.0, 0.5, 0.05);
  EXPECT_NEAR(both / 4000.0, 0.25, 0.05);  // task and modality drawn independently
  int differ = 0;
  for (int64_t i = 0; i < 200; ++i) differ += SampleTask(7, i) != SampleTask(8, i);
  EXPECT_GT(differ, 50) << "the seed must matter";

  // 4 ranks of 3 rows each see exactly what one rank sees on the 12-row global batch.
  MultiTaskSpec spec;
  spec.seed = 11;
  spec.superclass_of = DefaultSuperclassMap();
  const int64_t step = 5, gb = 12;
  Tensor all = RandomTensor({gb, 784}, 40);
  std::vector<int> all_labels(gb), all_task, all_mod;
  for (int64_t i = 0; i < gb; ++i) all_labels[i] = static_cast<int>(i % 10);
  const Tensor original = all.Clone();
  const std::vector<int> original_labels = all_labels;
  MakeMultiTaskBatch(spec, 28, 28, step * gb, &all, &all_labels, &all_task, &all_mod);
  for (int rank = 0; rank < 4; ++rank) {
    Tensor part({3, 784});
    std::copy(original.data() + rank * 3 * 784, original.data() + (rank + 1) * 3 * 784, part.data());
    std::vector<int> labels(original_labels.begin() + rank * 3, original_labels.begin() + rank * 3 + 3);
    std::vector<int> task, mod;
    MakeMultiTaskBatch(spec, 28, 28, step * gb + rank * 3, &part, &labels, &task, &mod);
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(task[i], all_task[rank * 3 + i]);
      EXPECT_EQ(mod[i], all_mod[rank * 3 + i]);
      EXPECT_EQ(labels[i], all_labels[rank * 3 + i]);
    }
    for (int64_t j = 0; j < part.numel(); ++j) ASSERT_EQ(part.at(j), all.at(rank * 3 * 784 + j));
  }
  for (int64_t i = 0; i < gb; ++i) {
    const int c = original_labels[i];
    EXPECT_EQ(all_labels[i], all_task[i] == 0 ? c : 10 + DefaultSuperclassMap()[c]);
  }
}

TEST(MultiTask, SecondViewRotatesAndInverts) {
  // A 2x2 check of the orientation: clockwise, output (r, c) = input (1 - c, r), inverted.
  Tensor img = Tensor::FromVector({4}, {1.f, 2.f, 3.f, 4.f});  // [[1, 2], [3, 4]]
  ToSecondView(img.data(), 2, 2);
  const float off = (1.f - 2.f * kFashionMnistMean) / kFashionMnistStd;
  EXPECT_FLOAT_EQ(img.at(0), off - 3.f);  // [[3, 1], [4, 2]] inverted
  EXPECT_FLOAT_EQ(img.at(1), off - 1.f);
  EXPECT_FLOAT_EQ(img.at(2), off - 4.f);
  EXPECT_FLOAT_EQ(img.at(3), off - 2.f);
  // Raw pixel p -> 255 - p in normalised units; four applications give the image back.
  const float p = 40.f, n = (p / 255.f - kFashionMnistMean) / kFashionMnistStd;
  Tensor one = Tensor::FromVector({1}, {n});
  ToSecondView(one.data(), 1, 1);
  EXPECT_NEAR(one.at(0), ((255.f - p) / 255.f - kFashionMnistMean) / kFashionMnistStd, 1e-5);
  Tensor big = RandomTensor({784}, 3);
  const Tensor before = big.Clone();
  for (int i = 0; i < 4; ++i) ToSecondView(big.data(), 28, 28);
  for (int64_t i = 0; i < 784; ++i) EXPECT_NEAR(big.at(i), before.at(i), 1e-5);
}

TEST(MultiTask, SuperclassMapFromFileAndDefault) {
  proto::TrainConfig c;
  c.mutable_model()->set_family("conditional");
  MultiTaskSpec spec;
  std::string err;
  ASSERT_TRUE(BuildMultiTaskSpec(c, &spec, &err)) << err;
  EXPECT_EQ(spec.superclass_of, DefaultSuperclassMap());
  EXPECT_EQ(spec.Target(kTaskCoarse, 9), 12);  // ankle boot -> footwear (2) -> column 12
  EXPECT_EQ(spec.Target(kTaskFine, 9), 9);
  EXPECT_EQ(TaskLogitRanges(c.model())[1], std::make_pair(10, 14));

  const std::string path = ::testing::TempDir() + "/superclasses_test.txt";
  {
    std::ofstream f(path);
    f << "# tops vs the rest\n";
    for (int k = 0; k < 10; ++k) f << k << " " << (k % 2 == 0 && k != 8 ? 0 : 1) << "\n";
  }
  c.mutable_model()->mutable_conditional()->set_superclass_file(path);
  c.mutable_model()->mutable_conditional()->set_num_superclasses(2);
  ASSERT_TRUE(BuildMultiTaskSpec(c, &spec, &err)) << err;
  EXPECT_EQ(spec.superclass_of[4], 0);
  EXPECT_EQ(spec.superclass_of[8], 1);
  c.mutable_model()->mutable_conditional()->set_num_superclasses(3);  // id 2 never used
  EXPECT_FALSE(BuildMultiTaskSpec(c, &spec, &err));
  EXPECT_NE(err.find("uses 2 super-classes"), std::string::npos) << err;
  {
    std::ofstream f(path);
    f << "0 0\n1 5\n";
  }
  EXPECT_FALSE(BuildMultiTaskSpec(c, &spec, &err));
  EXPECT_NE(err.find(":2:"), std::string::npos) << err;
  std::remove(path.c_str());
}

}  // namespace
}  // namespace moe
