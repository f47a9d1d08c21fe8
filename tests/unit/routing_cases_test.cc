// Routing building blocks (models/moe): capacity, softmax, top-k, slot assignment, and the
// hand-made cases 1-6 of models/moe/README.md ("Hand-made test cases"), exactly as stated there.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <vector>

#include "core/rng.h"
#include "models/moe/aux_losses.h"
#include "models/moe/capacity.h"
#include "models/moe/router_math.h"
#include "models/moe/slot_assignment.h"

namespace moe {
namespace {

// ---------------------------------------------------------------------------------------------
// Case 1: capacity, c=1, E=4, k=1, N=8: 2 with round, 4 with ceil-to-multiple-of-4.
// c=1.05: round 2, ceil 3.
TEST(SeedsCase1, Capacity) {
  EXPECT_EQ(CapacityPerExpert(1, 8, 1.0, 4, CapacityRounding::kRound), 2);
  EXPECT_EQ(CapacityPerExpert(1, 8, 1.0, 4, CapacityRounding::kCeilMultipleOf4), 4);
  EXPECT_EQ(CapacityPerExpert(1, 8, 1.0, 4, CapacityRounding::kCeil), 2);
  EXPECT_EQ(CapacityPerExpert(1, 8, 1.05, 4, CapacityRounding::kRound), 2);
  EXPECT_EQ(CapacityPerExpert(1, 8, 1.05, 4, CapacityRounding::kCeil), 3);
  // The same with the capacity factor as the float the config stores (1.05f = 1.04999995...).
  EXPECT_EQ(CapacityPerExpert(1, 8, 1.05f, 4, CapacityRounding::kRound), 2);
  EXPECT_EQ(CapacityPerExpert(1, 8, 1.05f, 4, CapacityRounding::kCeil), 3);
}

TEST(Capacity, RoundingModesAndFloatNoise) {
  // x = 2.0000000001 (noise) must not ceil to 3.
  EXPECT_EQ(CapacityPerExpert(1, 8, 1.00000000005, 4, CapacityRounding::kCeil), 2);
  // 1.1f = 1.10000002384..., so 10 * 1.1f = 11.0000002: still 11, not 12.
  EXPECT_EQ(CapacityPerExpert(1, 10, 1.1f, 1, CapacityRounding::kCeil), 11);
  EXPECT_EQ(CapacityPerExpert(1, 10, 1.1f, 1, CapacityRounding::kCeilMultipleOf4), 12);
  // A real fractional part still rounds up: 2 * 8 * 1.05 / 8 = 2.1 -> 3; 1000.001 -> 1001.
  EXPECT_EQ(CapacityPerExpert(1, 1000001, 1.0, 1000, CapacityRounding::kCeil), 1001);
  EXPECT_EQ(CapacityPerExpert(2, 8, 1.05, 8, CapacityRounding::kCeil), 3);
  // Round half away from zero: 5 / 2 = 2.5 -> 3; 2.4 -> 2; 2.6 -> 3.
  EXPECT_EQ(CapacityPerExpert(1, 5, 1.0, 2, CapacityRounding::kRound), 3);
  // 0.7f * 5 = 3.49999994 is meant as 3.5 -> 4 (half away from zero), not 3.
  EXPECT_EQ(CapacityPerExpert(1, 5, 0.7f, 1, CapacityRounding::kRound), 4);
  EXPECT_EQ(CapacityPerExpert(1, 12, 1.0, 5, CapacityRounding::kRound), 2);
  EXPECT_EQ(CapacityPerExpert(1, 13, 1.0, 5, CapacityRounding::kRound), 3);
  // Multiple of 4 after ceil: 2.1 -> 3 -> 4; 4.2 -> 5 -> 8; exactly 8 stays 8.
  EXPECT_EQ(CapacityPerExpert(1, 8, 1.05, 4, CapacityRounding::kCeilMultipleOf4), 4);
  EXPECT_EQ(CapacityPerExpert(1, 16, 1.05, 4, CapacityRounding::kCeilMultipleOf4), 8);
  EXPECT_EQ(CapacityPerExpert(1, 32, 1.0, 4, CapacityRounding::kCeilMultipleOf4), 8);
  // At least 1 (at least 4 for the multiple-of-4 mode).
  EXPECT_EQ(CapacityPerExpert(1, 1, 1.0, 64, CapacityRounding::kRound), 1);
  EXPECT_EQ(CapacityPerExpert(1, 0, 1.0, 8, CapacityRounding::kCeil), 1);
  EXPECT_EQ(CapacityPerExpert(1, 0, 1.0, 8, CapacityRounding::kCeilMultipleOf4), 4);
  // V-MoE shape: k=2, 8 images x 197 tokens, c=1.05, E=8: 413.7 -> 414 (ceil), 416 (mult of 4).
  EXPECT_EQ(CapacityPerExpert(2, 8 * 197, 1.05, 8, CapacityRounding::kCeil), 414);
  EXPECT_EQ(CapacityPerExpert(2, 8 * 197, 1.05, 8, CapacityRounding::kCeilMultipleOf4), 416);
  EXPECT_EQ(CapacityPerExpert(2, 8 * 197, 1.05, 8, CapacityRounding::kRound), 414);
}

// ---------------------------------------------------------------------------------------------
// Cases 2 and 3 share this input; the gates ARE the router probabilities.
const std::vector<float> kCase2Gates = {.4f, 0.f, .2f,  //
                                        .5f, .1f, .4f,  //
                                        .3f, .2f, .6f};

struct Routed {
  std::vector<int> expert, slot;
  std::vector<float> gate;
  std::vector<int64_t> counts;
  std::vector<int64_t> order;
  int64_t dropped = 0;
};

Routed RouteCase2(bool bpr) {
  const int64_t n = 3;
  const int E = 3, k = 2;
  const int64_t C = 2;
  Routed r;
  r.expert.resize(n * k);
  r.gate.resize(n * k);
  r.slot.resize(n * k);
  r.counts.resize(E);
  TopKRows(kCase2Gates.data(), n, E, k, r.expert.data(), r.gate.data());
  r.order = bpr ? BatchPrioritizedOrder(r.gate.data(), n, k) : IdentityOrder(n);
  r.dropped = AssignSlots(r.expert.data(), n, k, E, C, r.order, r.slot.data(), r.counts.data());
  return r;
}

// Case 2. Vanilla fill, k=2, C=2: token 0 -> (e0, slot 0) and (e2, slot 1); token 1 -> (e0, slot
// 1), its e2 choice dropped; token 2 -> (e2, slot 0), its e0 choice dropped.
TEST(SeedsCase2, VanillaFill) {
  const Routed r = RouteCase2(/*bpr=*/false);
  EXPECT_EQ(r.expert, (std::vector<int>{0, 2, 0, 2, 2, 0}));
  EXPECT_EQ(r.gate, (std::vector<float>{.4f, .2f, .5f, .4f, .6f, .3f}));
  EXPECT_EQ(r.slot, (std::vector<int>{0, 1, 1, -1, 0, -1}));
  EXPECT_EQ(r.dropped, 2);
  EXPECT_EQ(r.counts, (std::vector<int64_t>{2, 0, 2}));
}

// Case 3. BPR, same input: order tokens 2, 1, 0; token 2 -> (e2, 0); token 1 -> (e0, 0); token 0
// -> (e0, 1); second pass: token 1 -> (e2, 1); token 0's e2 dropped; token 2's e0 dropped.
// Weights unchanged.
TEST(SeedsCase3, BatchPrioritizedFill) {
  const Routed r = RouteCase2(/*bpr=*/true);
  EXPECT_EQ(r.order, (std::vector<int64_t>{2, 1, 0}));
  EXPECT_EQ(r.expert, (std::vector<int>{0, 2, 0, 2, 2, 0}));
  EXPECT_EQ(r.slot, (std::vector<int>{1, -1, 0, 1, 0, -1}));
  EXPECT_EQ(r.dropped, 2);
  EXPECT_EQ(r.counts, (std::vector<int64_t>{2, 0, 2}));
  // Combine weights are the same as without BPR (BPR only changes who gets a slot).
  EXPECT_EQ(r.gate, RouteCase2(false).gate);
}

// Case 4. Importance loss, gates [[.5,.4,.1],[.3,.3,.4],[.1,.2,.7],[.8,.2,0]] -> 0.03875; it is
// identical under any noise draw (the loss takes the CLEAN probabilities; see aux_losses_test).
// Imp = [1.7, 1.1, 1.2], mean 4/3, population var = 0.0688889, CV^2 = 0.0688889 / (16/9).
TEST(SeedsCase4, ImportanceLoss) {
  const std::vector<float> g = {.5f, .4f, .1f, .3f, .3f, .4f, .1f, .2f, .7f, .8f, .2f, 0.f};
  EXPECT_NEAR(ImportanceLoss(g.data(), 4, 3, 1.f, nullptr), 0.03875, 1e-6);
}

// Case 5. Switch loss, p = [[.7,.3],[.6,.4],[.2,.8],[.9,.1]]: f = [.75,.25], P = [.6,.4],
// E*sum f P = 1.10.
TEST(SeedsCase5, SwitchLoss) {
  const std::vector<float> p = {.7f, .3f, .6f, .4f, .2f, .8f, .9f, .1f};
  EXPECT_NEAR(SwitchLoss(p.data(), 4, 2, 1.f, nullptr), 1.10, 1e-6);
  // A uniform router gives exactly 1 (ties go to expert 0: f = [1, 0], P = [.5, .5]).
  const std::vector<float> u(4 * 2, 0.5f);
  EXPECT_NEAR(SwitchLoss(u.data(), 4, 2, 1.f, nullptr), 1.0, 1e-7);
  // A tied top-1 counts for the LOWER index: f = [1, 0], P = [.7, .3] -> 2 * .7 = 1.4
  // (ties to the higher index would give f = [.5, .5] and 1.0).
  const std::vector<float> tie = {.5f, .5f, .9f, .1f};
  EXPECT_NEAR(SwitchLoss(tie.data(), 2, 2, 1.f, nullptr), 1.4, 1e-6);
}

// Case 6. z-loss, logits [[0,0,0,0],[1,2,3,4]] -> 10.8185.
// lse row 0 = ln 4 = 1.386294 (sq 1.921812); row 1 = 4.440190 (sq 19.715291); mean 10.818552.
TEST(SeedsCase6, ZLoss) {
  const std::vector<float> l = {0, 0, 0, 0, 1, 2, 3, 4};
  EXPECT_NEAR(ZLoss(l.data(), 2, 4, 1.f, nullptr), 10.8185, 5e-5);
}

// ---------------------------------------------------------------------------------------------
// Softmax and top-k.

TEST(RouterMath, SoftmaxIsStableAndNormalised) {
  const std::vector<float> l = {1000.f, 1001.f, 1002.f, -1000.f, -1001.f, -1002.f, 0, 0, 0};
  std::vector<float> p(9);
  SoftmaxRows(l.data(), 3, 3, p.data());
  // softmax(0, 1, 2) = e^j / (1 + e + e^2).
  const double z = 1 + std::exp(1.0) + std::exp(2.0);
  EXPECT_NEAR(p[0], 1 / z, 1e-6);
  EXPECT_NEAR(p[1], std::exp(1.0) / z, 1e-6);
  EXPECT_NEAR(p[2], std::exp(2.0) / z, 1e-6);
  EXPECT_NEAR(p[3], std::exp(2.0) / z, 1e-6);
  EXPECT_NEAR(p[5], 1 / z, 1e-6);
  for (int j = 6; j < 9; ++j) EXPECT_NEAR(p[j], 1.0 / 3, 1e-7);
  for (float v : p) EXPECT_TRUE(std::isfinite(v));
}

TEST(RouterMath, TopKOrdersDescendingWithLowerIndexOnTies) {
  const std::vector<float> p = {.1f, .3f, .3f, .3f,   // ties: 1, 2, 3 in index order
                                .4f, .1f, .4f, .1f,   // ties: 0 then 2
                                .05f, .05f, .1f, .8f};
  std::vector<int> e(3 * 3);
  std::vector<float> g(3 * 3);
  TopKRows(p.data(), 3, 4, 3, e.data(), g.data());
  EXPECT_EQ(e, (std::vector<int>{1, 2, 3, 0, 2, 1, 3, 2, 0}));
  EXPECT_EQ(g, (std::vector<float>{.3f, .3f, .3f, .4f, .4f, .1f, .8f, .1f, .05f}));
  // k = E returns a full permutation.
  std::vector<int> all(4);
  std::vector<float> ga(4);
  TopKRows(p.data() + 8, 1, 4, 4, all.data(), ga.data());
  EXPECT_EQ(all, (std::vector<int>{3, 2, 0, 1}));
}

TEST(RouterMath, TopKMatchesASortOnRandomRows) {
  const int64_t n = 200;
  const int E = 7, k = 3;
  CounterRng rng(11);
  std::vector<float> p(n * E);
  // Values on a coarse grid so that ties actually occur.
  for (int64_t i = 0; i < n * E; ++i) p[i] = std::floor(rng.Uniform(i) * 5.f) / 5.f;
  std::vector<int> e(n * k);
  std::vector<float> g(n * k);
  TopKRows(p.data(), n, E, k, e.data(), g.data());
  for (int64_t t = 0; t < n; ++t) {
    std::vector<int> idx(E);
    for (int j = 0; j < E; ++j) idx[j] = j;
    std::stable_sort(idx.begin(), idx.end(),
                     [&](int a, int b) { return p[t * E + a] > p[t * E + b]; });
    for (int r = 0; r < k; ++r) {
      EXPECT_EQ(e[t * k + r], idx[r]) << "row " << t;
      EXPECT_EQ(g[t * k + r], p[t * E + idx[r]]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Slot assignment.

TEST(SlotAssignment, BatchPrioritizedOrderIsStableDescending) {
  // k = 2; only gate[t*k + 0] matters.
  const std::vector<float> g = {.5f, .9f, .7f, .1f, .5f, .4f, .9f, .0f, .7f, .2f};
  EXPECT_EQ(BatchPrioritizedOrder(g.data(), 5, 2), (std::vector<int64_t>{3, 1, 4, 0, 2}));
}

// Many tokens with few distinct gate values (beyond the size where a sort is insertion sort):
// ties must keep the lower token index first.
TEST(SlotAssignment, BatchPrioritizedOrderKeepsTokenOrderOnTiesForLargeN) {
  const int64_t n = 300;
  const int k = 1;
  std::vector<float> g(n);
  for (int64_t t = 0; t < n; ++t) g[t] = static_cast<float>((t * 7) % 5) / 4.f;
  const auto order = BatchPrioritizedOrder(g.data(), n, k);
  ASSERT_EQ(static_cast<int64_t>(order.size()), n);
  for (int64_t i = 1; i < n; ++i) {
    const int64_t a = order[i - 1], b = order[i];
    ASSERT_TRUE(g[a] > g[b] || (g[a] == g[b] && a < b)) << "positions " << i - 1 << ", " << i;
  }
}

TEST(SlotAssignment, DroplessPlacesEverything) {
  // Every token picks experts 0 and 1: with capacity -1 nothing is dropped.
  const int64_t n = 50;
  const int k = 2, E = 3;
  std::vector<int> expert(n * k);
  for (int64_t t = 0; t < n; ++t) {
    expert[t * k] = 0;
    expert[t * k + 1] = (t % 5 == 0) ? 2 : 1;
  }
  std::vector<int> slot(n * k, -7);
  std::vector<int64_t> counts(E, -7);
  EXPECT_EQ(AssignSlots(expert.data(), n, k, E, -1, IdentityOrder(n), slot.data(), counts.data()),
            0);
  EXPECT_EQ(counts, (std::vector<int64_t>{50, 40, 10}));
  for (int64_t t = 0; t < n; ++t) {
    EXPECT_EQ(slot[t * k], t);  // first pass in token order
    EXPECT_GE(slot[t * k + 1], 0);
  }
  // The same input with a capacity of 10 drops 40 + 30 + 0.
  EXPECT_EQ(AssignSlots(expert.data(), n, k, E, 10, IdentityOrder(n), slot.data(), counts.data()),
            70);
  EXPECT_EQ(counts, (std::vector<int64_t>{10, 10, 10}));
}

// On random routings, for every capacity and both orders:
//  - per expert the kept slots are exactly {0, ..., counts-1}, each once; counts <= capacity;
//  - kept + dropped = n*k and sum(counts) = kept;
//  - an assignment is dropped only if its expert is full;
//  - fill order: every r-th choice precedes every (r+1)-th choice of the same expert, and within
//    a pass slots increase with the token's position in `order`.
TEST(SlotAssignment, ConservationAndOrderInvariantsOnRandomInputs) {
  CounterRng rng(2024);
  int trial = 0;
  for (int64_t n : {1, 7, 64, 257}) {
    for (int E : {1, 3, 8}) {
      for (int k : {1, 2, 3}) {
        if (k > E) continue;
        for (int64_t cap : {-1, 0, 1, 3, 40}) {
          for (bool bpr : {false, true}) {
            ++trial;
            std::vector<float> logits(n * E), probs(n * E), gate(n * k);
            for (int64_t i = 0; i < n * E; ++i) logits[i] = 2.f * rng.Normal(i, trial);
            SoftmaxRows(logits.data(), n, E, probs.data());
            std::vector<int> expert(n * k), slot(n * k);
            TopKRows(probs.data(), n, E, k, expert.data(), gate.data());
            const auto order = bpr ? BatchPrioritizedOrder(gate.data(), n, k) : IdentityOrder(n);
            std::vector<int64_t> counts(E);
            const int64_t dropped =
                AssignSlots(expert.data(), n, k, E, cap, order, slot.data(), counts.data());
            SCOPED_TRACE(::testing::Message() << "n=" << n << " E=" << E << " k=" << k
                                              << " cap=" << cap << " bpr=" << bpr);
            if (cap < 0) EXPECT_EQ(dropped, 0);
            std::vector<std::set<int>> seen(E);
            int64_t kept = 0, neg = 0;
            for (int64_t i = 0; i < n * k; ++i) {
              const int e = expert[i];
              if (slot[i] < 0) {
                EXPECT_EQ(slot[i], -1);
                ++neg;
                EXPECT_EQ(counts[e], cap) << "dropped while expert " << e << " not full";
                continue;
              }
              ++kept;
              EXPECT_TRUE(seen[e].insert(slot[i]).second) << "duplicate slot " << slot[i];
            }
            EXPECT_EQ(neg, dropped);
            EXPECT_EQ(kept + dropped, n * k);
            int64_t total = 0;
            for (int e = 0; e < E; ++e) {
              total += counts[e];
              if (cap >= 0) EXPECT_LE(counts[e], cap);
              EXPECT_EQ(static_cast<int64_t>(seen[e].size()), counts[e]);
              if (!seen[e].empty()) {
                EXPECT_EQ(*seen[e].begin(), 0);
                EXPECT_EQ(*seen[e].rbegin(), counts[e] - 1);
              }
            }
            EXPECT_EQ(total, kept);
            // Fill order: walk passes and `order`; each kept slot must be the next one.
            std::vector<int> next(E, 0);
            for (int r = 0; r < k; ++r)
              for (int64_t t : order) {
                const int s = slot[t * k + r];
                if (s >= 0) EXPECT_EQ(s, next[expert[t * k + r]]++);
              }
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace moe
