// Cases 7, 9, 10 and 11 of models/moe/README.md: expert choice, pMoE's per-expert top-l patches,
// Mobile V-MoE's per-image routing, conditional MoE's renormalised top-2 and merged expert
// weights.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "core/gemm.h"
#include "core/rng.h"
#include "models/moe/router_math.h"
#include "models/moe/rule_selections.h"

namespace moe {
namespace {

std::vector<float> Random(int64_t n, uint64_t key, float scale = 1.f) {
  CounterRng rng(key);
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = scale * rng.Normal(i);
  return v;
}

// Case 7: expert choice on case 2's gates, C = 2: e0 takes tokens {1, 0}; e1 {2, 1}; e2 {2, 1}.
TEST(RoutingRules, SeedCase7ExpertChoice) {
  const std::vector<float> s = {.4f, 0.f, .2f, .5f, .1f, .4f, .3f, .2f, .6f};
  std::vector<int64_t> token(6);
  std::vector<float> gate(6);
  ExpertChoiceSelect(s.data(), 3, 3, 2, token.data(), gate.data());
  EXPECT_EQ(token, (std::vector<int64_t>{1, 0, 2, 1, 2, 1}));
  EXPECT_EQ(gate, (std::vector<float>{.5f, .4f, .2f, .1f, .6f, .4f}));
}

TEST(RoutingRules, ExpertChoiceTiesGoToTheLowerToken) {
  const std::vector<float> s = {.5f, .5f, .5f, .5f};  // 4 tokens, 1 expert
  std::vector<int64_t> token(2);
  std::vector<float> gate(2);
  ExpertChoiceSelect(s.data(), 4, 1, 2, token.data(), gate.data());
  EXPECT_EQ(token, (std::vector<int64_t>{0, 1}));
}

// Case 9: every expert takes exactly l patches of the image, distinct, with the highest scores;
// its gates sum to 1; patches no expert chose contribute 0.
TEST(RoutingRules, SeedCase9PatchTopL) {
  const int64_t n = 16;
  const int E = 8, l = 6;  // the official MNIST joint setting
  const auto scores = Random(n * E, 5);
  std::vector<int64_t> patch(E * l);
  std::vector<float> gate(E * l);
  PatchTopL(scores.data(), n, E, l, PatchGateMode::kSoftmaxOverKept, patch.data(), gate.data());
  std::set<int64_t> chosen_by_any;
  for (int s = 0; s < E; ++s) {
    std::set<int64_t> mine(patch.begin() + s * l, patch.begin() + (s + 1) * l);
    EXPECT_EQ(mine.size(), static_cast<size_t>(l)) << "expert " << s;
    double sum = 0;
    float weakest_kept = 1e30f;
    for (int i = 0; i < l; ++i) {
      sum += gate[s * l + i];
      weakest_kept = std::min(weakest_kept, scores[patch[s * l + i] * E + s]);
    }
    EXPECT_NEAR(sum, 1.0, 1e-6) << "expert " << s;
    for (int64_t j = 0; j < n; ++j)
      if (!mine.count(j)) EXPECT_LE(scores[j * E + s], weakest_kept) << "expert " << s;
    chosen_by_any.insert(mine.begin(), mine.end());
  }
  // A layer output built from the choices: y_j = sum over experts that chose j of gate * 1.
  std::vector<float> y(n, 0.f);
  for (int s = 0; s < E; ++s)
    for (int i = 0; i < l; ++i) y[patch[s * l + i]] += gate[s * l + i];
  for (int64_t j = 0; j < n; ++j)
    if (!chosen_by_any.count(j)) EXPECT_EQ(y[j], 0.f) << "unchosen patch " << j;
}

TEST(RoutingRules, PatchGateOverAllPatchesIsUnnormalisedSoftmax) {
  const std::vector<float> scores = {0.f, 1.f, 2.f, 3.f};  // n = 4 patches, one expert
  std::vector<int64_t> patch(2);
  std::vector<float> gate(2);
  PatchTopL(scores.data(), 4, 1, 2, PatchGateMode::kSoftmaxOverAllKeepTopL, patch.data(),
            gate.data());
  const double z = 1 + std::exp(1.) + std::exp(2.) + std::exp(3.);
  EXPECT_EQ(patch, (std::vector<int64_t>{3, 2}));
  EXPECT_NEAR(gate[0], std::exp(3.) / z, 1e-6);
  EXPECT_NEAR(gate[1], std::exp(2.) / z, 1e-6);
}

// Case 10: every token of an image has the same experts and gates.
TEST(RoutingRules, SeedCase10PerImageRouting) {
  const int64_t B = 3, T = 5;
  const int E = 10, k = 2;
  auto logits = Random(B * E, 8, 2.f);
  std::vector<float> probs(B * E);
  SoftmaxRows(logits.data(), B, E, probs.data());
  std::vector<int> expert(B * T * k);
  std::vector<float> gate(B * T * k);
  PerImageRouting(probs.data(), B, E, k, T, expert.data(), gate.data());
  std::vector<int> e0(B * k);
  std::vector<float> g0(B * k);
  TopKRows(probs.data(), B, E, k, e0.data(), g0.data());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int r = 0; r < k; ++r) {
        EXPECT_EQ(expert[(b * T + t) * k + r], e0[b * k + r]);
        EXPECT_EQ(gate[(b * T + t) * k + r], g0[b * k + r]);
      }
}

// Case 11: equal attribute vectors give equal experts and gates; top-2 gates sum to 1; merged
// weights give g1 E1(x) + g2 E2(x) for linear experts.
TEST(RoutingRules, SeedCase11ConditionalRouting) {
  const int D = 6, E = 8, k = 2, A = 8;
  // z = attributes W_a (the Linear 8 -> D; LayerNorm omitted: it is a function of z, so equal
  // inputs stay equal), logits = z W_g.
  const auto Wa = Random(A * D, 11), Wg = Random(D * E, 12);
  std::vector<float> attrs = {1, 0, 1, 0, 0, 1, 0, 0,   // token 0
                              0, 1, 0, 0, 1, 0, 0, 1,   // token 1
                              1, 0, 1, 0, 0, 1, 0, 0};  // token 2 = token 0
  std::vector<float> z(3 * D), logits(3 * E), probs(3 * E);
  SgemmPacked(false, false, 3, D, A, 1.f, attrs.data(), Wa.data(), 0.f, z.data());
  SgemmPacked(false, false, 3, E, D, 1.f, z.data(), Wg.data(), 0.f, logits.data());
  SoftmaxRows(logits.data(), 3, E, probs.data());
  std::vector<int> expert(3 * k);
  std::vector<float> gate(3 * k);
  RenormalisedTopK(probs.data(), 3, E, k, expert.data(), gate.data());
  EXPECT_EQ(expert[0], expert[4]);
  EXPECT_EQ(expert[1], expert[5]);
  EXPECT_EQ(gate[0], gate[4]);
  EXPECT_EQ(gate[1], gate[5]);
  for (int t = 0; t < 3; ++t) EXPECT_NEAR(gate[t * k] + gate[t * k + 1], 1.f, 1e-6f);
  EXPECT_GE(gate[0], gate[1]);

  // Linear experts W_e [D, D]: x W_merged == g1 x W_e1 + g2 x W_e2.
  const auto W1 = Random(D * D, 21), W2 = Random(D * D, 22), x = Random(D, 23);
  std::vector<float> merged(D * D), y_merged(D), y1(D), y2(D);
  MergeExpertWeights({W1.data(), W2.data()}, {gate[0], gate[1]}, D * D, merged.data());
  SgemmPacked(false, false, 1, D, D, 1.f, x.data(), merged.data(), 0.f, y_merged.data());
  SgemmPacked(false, false, 1, D, D, 1.f, x.data(), W1.data(), 0.f, y1.data());
  SgemmPacked(false, false, 1, D, D, 1.f, x.data(), W2.data(), 0.f, y2.data());
  for (int j = 0; j < D; ++j)
    EXPECT_NEAR(y_merged[j], gate[0] * y1[j] + gate[1] * y2[j], 1e-5f * (1 + std::abs(y1[j])));
}

}  // namespace
}  // namespace moe
