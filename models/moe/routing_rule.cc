#include "models/moe/routing_rule.h"

#include <glog/logging.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "models/moe/capacity.h"
#include "models/moe/router_math.h"
#include "models/moe/rule_selections.h"
#include "models/moe/slot_assignment.h"

namespace moe {

int64_t RoutingRuleImpl::Capacity(const MoeLayerOptions& o, double cf) const {
  return CapacityPerExpert(o.top_k, o.group_tokens, cf, o.num_experts, o.rounding);
}

bool RoutingRuleImpl::RenormalisedGates(const MoeLayerOptions& o) const {
  // Learned noise: Shazeer's softmax(KeepTopK(H, k)), the gates renormalised over the kept k.
  return o.renormalise_gates || o.noise == RouterNoise::kLearnedSoftplus;
}

void ValidateRoutingOptions(const RoutingRuleImpl& rule, const std::string& layer,
                            const MoeLayerOptions& o) {
  CHECK(o.top_k >= 1 && o.top_k <= o.num_experts)
      << layer << ": top_k " << o.top_k << " must be in [1, num_experts=" << o.num_experts << "]";
  if (o.noise == RouterNoise::kLearnedSoftplus) {
    CHECK(rule.SupportsLearnedNoise())
        << layer << ": learned softplus router noise is for token top-k routing, not "
        << rule.name();
    // LoadLoss's Phi((t - h) / sigma) assumes one fixed sigma for every (row, expert).
    CHECK_EQ(o.load_weight, 0.f) << layer << ": the load loss needs the fixed noise std";
  }
  if (o.balance_sq_weight > 0)
    CHECK(rule.RowsPickExperts())
        << layer << ": the balance-squared loss reads k gates per router row (token-side rules), "
        << "not " << rule.name();
  CHECK(!(o.dropless && !rule.RowsPickExperts()))
      << layer << ": dropless applies to the token-side rules only (" << rule.name()
      << " fills every slot by construction)";
  CHECK(!o.external_decision || rule.router_input() == RouterInputKind::kImageMean)
      << layer << ": an external decision is per image, not " << rule.name();
  rule.Validate(layer, o);
}

void TopKGates(const float* probs, int64_t rows, int E, int k, bool renormalise, int* expert,
               float* gate) {
  if (renormalise) {
    RenormalisedTopK(probs, rows, E, k, expert, gate);
  } else {
    TopKRows(probs, rows, E, k, expert, gate);
  }
}

// Renormalised gates g_r = p_r / S (S = sum of the k kept probs): dp_j = (dg_j - <dg, g>) / S.
void TopKGatesBackward(const float* probs_row, const int* expert, const float* gate,
                       const float* d_gate, int k, bool renormalised, float* d_probs_row) {
  if (!renormalised) {
    for (int r = 0; r < k; ++r) d_probs_row[expert[r]] += d_gate[r];
    return;
  }
  double S = 0, dot = 0;
  for (int r = 0; r < k; ++r) {
    S += probs_row[expert[r]];
    dot += static_cast<double>(d_gate[r]) * gate[r];
  }
  for (int r = 0; r < k; ++r) d_probs_row[expert[r]] += static_cast<float>((d_gate[r] - dot) / S);
}

namespace {

// The gate's bits as an unsigned key whose ascending order is the gate's DEScending order, NaN
// last (as -inf) and -0 tied with +0.
uint32_t DescendingGateKey(float g) {
  if (g != g) g = -std::numeric_limits<float>::infinity();
  if (g == 0.f) g = 0.f;
  uint32_t bits;
  std::memcpy(&bits, &g, sizeof bits);
  // Ascending float order as unsigned order: flip every bit of negatives, the sign of others.
  const uint32_t ascending = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return ~ascending;
}

}  // namespace

// A stable LSD radix sort of the 32-bit keys, one byte per pass, starting from token order: equal
// keys keep the lower token first, which is the (key, token) order of the unique 64-bit keys the
// CUDA path sorts. O(n) per group where a comparison sort was O(n log n) with mispredicted
// branches (counting ranks over all pairs, tried too, was slower still at 128 tokens); a pass
// whose byte is the same in every key (softmax gates share their top byte) is skipped.
std::vector<int64_t> BatchPrioritizedOrderByKeys(const float* gate, int64_t n, int k) {
  CHECK(n >= 0 && n <= int64_t{1} << 32) << "BatchPrioritizedOrderByKeys: n=" << n;
  CHECK_GE(k, 1);
  std::vector<uint32_t> key(n), key_next(n);
  std::vector<int64_t> order(n), order_next(n);
  for (int64_t t = 0; t < n; ++t) {
    key[t] = DescendingGateKey(gate[t * k]);
    order[t] = t;
  }
  for (int shift = 0; shift < 32; shift += 8) {
    int64_t start[257] = {};
    for (int64_t t = 0; t < n; ++t) ++start[((key[t] >> shift) & 0xFFu) + 1];
    if (n == 0 || start[((key[0] >> shift) & 0xFFu) + 1] == n) continue;  // one byte value
    for (int b = 0; b < 256; ++b) start[b + 1] += start[b];
    for (int64_t t = 0; t < n; ++t) {
      const int64_t to = start[(key[t] >> shift) & 0xFFu]++;
      key_next[to] = key[t];
      order_next[to] = order[t];
    }
    key.swap(key_next);
    order.swap(order_next);
  }
  return order;
}

void FillCapacitySlots(const MoeLayerOptions& o, int64_t capacity, RoutingState* R,
                       MoeMetrics* m) {
  const int E = o.num_experts, k = R->kc;
  const int64_t n = o.group_tokens, G = R->groups;
  R->slot.assign(R->rows * k, -1);
  R->block_rows.assign(E * G, 0);
  std::vector<int64_t> counts(E);
  const std::vector<int64_t> identity =
      o.batch_prioritized ? std::vector<int64_t>() : IdentityOrder(n);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t t0 = g * n;
    const std::vector<int64_t> order =
        o.batch_prioritized ? BatchPrioritizedOrderByKeys(R->gate.data() + t0 * k, n, k) : identity;
    std::fill(counts.begin(), counts.end(), 0);
    m->dropped += AssignSlots(R->expert.data() + t0 * k, n, k, E, capacity, order,
                              R->slot.data() + t0 * k, counts.data());
    for (int e = 0; e < E; ++e) {
      R->block_rows[e * G + g] = capacity < 0 ? counts[e] : capacity;
      m->tokens_per_expert[e] += counts[e];
    }
  }
  m->assignments = R->rows * k;
  m->capacity_slots = capacity < 0 ? 0 : capacity * E * G;
}

void StartExpertSidePlan(int E, RoutingState* R) {
  R->expert.resize(R->rows * E);
  R->slot.assign(R->rows * E, -1);
  R->gate.assign(R->rows * E, 0.f);
  for (int64_t t = 0; t < R->rows; ++t)
    for (int e = 0; e < E; ++e) R->expert[t * E + e] = e;
}

// Nothing is dropped; what an expert-side rule leaves out is rows no expert took.
void FinishExpertSidePlan(int E, int64_t capacity, RoutingState* R, MoeMetrics* m) {
  const int64_t G = R->groups;
  R->block_rows.assign(E * G, capacity);
  for (int e = 0; e < E; ++e) m->tokens_per_expert[e] += capacity * G;
  m->assignments = capacity * E * G;
  m->capacity_slots = capacity * E * G;
  for (int64_t t = 0; t < R->rows; ++t) {
    bool taken = false;
    for (int e = 0; e < E && !taken; ++e) taken = R->slot[t * E + e] >= 0;
    if (!taken) ++m->unrouted_rows;
  }
}

}  // namespace moe
