// The expert-side routing rules, where experts pick rows instead of rows picking experts:
// expert choice (Zhou et al. 2022) and pMoE's per-expert top-l patches (Chowdhury et al. 2023).
// Every expert's slots are exactly full, so nothing is dropped; a row may be taken by 0..E
// experts (kc = E: choice r is expert r, slot -1 = not taken), and rows no expert took are
// counted as unrouted.
#include <glog/logging.h>

#include <algorithm>

#include "models/moe/moe_layer.h"
#include "models/moe/moe_routing_state.h"
#include "models/moe/routing_rules.h"

namespace moe {

namespace {

void CountUnrouted(const std::vector<int>& slot, int64_t rows, int E, MoeMetrics* m) {
  for (int64_t t = 0; t < rows; ++t) {
    bool taken = false;
    for (int e = 0; e < E && !taken; ++e) taken = slot[t * E + e] >= 0;
    if (!taken) ++m->unrouted_rows;
  }
}

}  // namespace

void MoeLayer::RouteExpertChoice() {
  Routing& R = *routing_;
  const int E = opt_.num_experts;
  const int64_t n = opt_.group_tokens, G = R.groups;
  const bool noisy = ctx_.training && opt_.noise_scale > 0.f;
  RouterProbs(noisy);
  const int64_t C = CurrentCapacity();
  R.expert.resize(R.rows * E);
  R.slot.assign(R.rows * E, -1);
  R.gate.assign(R.rows * E, 0.f);
  for (int64_t t = 0; t < R.rows; ++t)
    for (int e = 0; e < E; ++e) R.expert[t * E + e] = e;
  std::vector<int64_t> token(E * C);
  std::vector<float> gate(E * C);
  for (int64_t g = 0; g < G; ++g) {
    ExpertChoiceSelect(R.probs.data() + g * n * E, n, E, C, token.data(), gate.data());
    for (int e = 0; e < E; ++e)
      for (int64_t c = 0; c < C; ++c) {
        const int64_t t = g * n + token[e * C + c];
        R.slot[t * E + e] = static_cast<int>(c);
        R.gate[t * E + e] = gate[e * C + c];
      }
  }
  R.block_rows.assign(E * G, C);
  for (int e = 0; e < E; ++e) metrics_.tokens_per_expert[e] += C * G;
  metrics_.assignments = C * E * G;
  metrics_.capacity_slots = C * E * G;
  CountUnrouted(R.slot, R.rows, E, &metrics_);
  AddAuxLosses(n, 1, noisy);
}

void MoeLayer::RoutePatchTopL() {
  Routing& R = *routing_;
  const int E = opt_.num_experts, l = opt_.patch_top_l;
  const int64_t T = opt_.tokens_per_image, B = R.rows / T, G = R.groups;
  const int64_t images_per_group = opt_.group_tokens / T;
  // Scores r_{j,s} = <w_s, x_j>: the router matrix's column s is expert s's router.
  const bool noisy = ctx_.training && opt_.noise_scale > 0.f;
  RouterProbs(noisy);
  R.expert.resize(R.rows * E);
  R.slot.assign(R.rows * E, -1);
  R.gate.assign(R.rows * E, 0.f);
  for (int64_t t = 0; t < R.rows; ++t)
    for (int e = 0; e < E; ++e) R.expert[t * E + e] = e;
  const PatchGateMode mode = opt_.patch_gate_over_all ? PatchGateMode::kSoftmaxOverAllKeepTopL
                                                      : PatchGateMode::kSoftmaxOverKept;
  std::vector<int64_t> patch(E * l);
  std::vector<float> gate(E * l);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t j = b % images_per_group;  // image within its routing group
    PatchTopL(R.noisy_logits.data() + b * T * E, T, E, l, mode, patch.data(), gate.data());
    for (int s = 0; s < E; ++s)
      for (int i = 0; i < l; ++i) {
        const int64_t t = b * T + patch[s * l + i];
        R.slot[t * E + s] = static_cast<int>(j * l + i);
        R.gate[t * E + s] = opt_.hard_gates ? 1.f : gate[s * l + i];
      }
  }
  const int64_t C = CurrentCapacity();
  R.block_rows.assign(E * G, C);
  for (int e = 0; e < E; ++e) metrics_.tokens_per_expert[e] += C * G;
  metrics_.assignments = C * E * G;
  metrics_.capacity_slots = C * E * G;
  CountUnrouted(R.slot, R.rows, E, &metrics_);
  AddAuxLosses(opt_.group_tokens, 1, noisy);  // pMoE itself uses none (weights 0 in its config)
}

}  // namespace moe
