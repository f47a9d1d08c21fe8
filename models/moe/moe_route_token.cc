// The token-side routing rules: V-MoE token top-k (with Batch Prioritized Routing), conditional
// (attribute) routing, and Mobile V-MoE per-image routing. All three pick k experts per row and
// then fill capacity slots the V-MoE way: every row's 1st choice before any 2nd choice, in token
// order or BPR order, the rest dropped.
#include <glog/logging.h>

#include <algorithm>
#include <cmath>

#include "models/moe/moe_layer.h"
#include "models/moe/moe_routing_state.h"
#include "models/moe/router_math.h"
#include "models/moe/routing_rules.h"
#include "models/moe/slot_assignment.h"

namespace moe {

namespace {

// The k gates of each row: the kept softmax values (V-MoE), or those renormalised to sum to 1,
// which is the softmax over the kept k logits only (Shazeer's softmax(KeepTopK(H, k)),
// Uni-Perceiver-MoE's top-2).
void TopKGates(const float* probs, int64_t rows, int E, int k, bool renormalise, int* expert,
               float* gate) {
  if (renormalise) {
    RenormalisedTopK(probs, rows, E, k, expert, gate);
  } else {
    TopKRows(probs, rows, E, k, expert, gate);
  }
}

}  // namespace

// Capacity fill for the token-side rules; R.expert / R.gate must be set ([rows * k]).
void MoeLayer::FillCapacitySlots(int64_t capacity) {
  Routing& R = *routing_;
  const MoeLayerOptions& opt = opt_;
  MoeMetrics* metrics = &metrics_;
  const int E = opt.num_experts, k = R.kc;
  const int64_t n = opt.group_tokens, G = R.groups;
  R.slot.assign(R.rows * k, -1);
  R.block_rows.assign(E * G, 0);
  std::vector<int64_t> counts(E);
  const std::vector<int64_t> identity = IdentityOrder(n);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t t0 = g * n;
    const std::vector<int64_t> order =
        opt.batch_prioritized ? BatchPrioritizedOrder(R.gate.data() + t0 * k, n, k) : identity;
    std::fill(counts.begin(), counts.end(), 0);
    metrics->dropped += AssignSlots(R.expert.data() + t0 * k, n, k, E, capacity, order,
                                    R.slot.data() + t0 * k, counts.data());
    for (int e = 0; e < E; ++e) {
      R.block_rows[e * G + g] = capacity < 0 ? counts[e] : capacity;
      metrics->tokens_per_expert[e] += counts[e];
    }
  }
  metrics->assignments = R.rows * k;
  metrics->capacity_slots = capacity < 0 ? 0 : capacity * E * G;
}

void MoeLayer::RouteTokenTopK() {
  Routing& R = *routing_;
  const int k = R.kc;
  const bool noisy = NoiseOn();
  RouterProbs(noisy);
  R.expert.resize(R.rows * k);
  R.gate.resize(R.rows * k);
  TopKGates(R.probs.data(), R.rows, opt_.num_experts, k, RenormalisedGates(), R.expert.data(),
            R.gate.data());
  FillCapacitySlots(CurrentCapacity());
  AddAuxLosses(opt_.group_tokens, k, noisy);
}

void MoeLayer::RoutePerImage() {
  Routing& R = *routing_;
  const int k = R.kc, E = opt_.num_experts;
  const int64_t T = opt_.tokens_per_image, B = R.router_rows;
  const bool noisy = NoiseOn();
  RouterProbs(noisy);
  std::vector<int> img_expert(B * k);
  std::vector<float> img_gate(B * k);
  TopKGates(R.probs.data(), B, E, k, RenormalisedGates(), img_expert.data(), img_gate.data());
  R.expert.resize(R.rows * k);
  R.gate.resize(R.rows * k);
  for (int64_t t = 0; t < R.rows; ++t)
    for (int r = 0; r < k; ++r) {
      R.expert[t * k + r] = img_expert[(t / T) * k + r];
      R.gate[t * k + r] = img_gate[(t / T) * k + r];
    }
  // Capacity is a whole number of images and an image's tokens are contiguous with equal
  // gates, so (in token or BPR order) an image is kept or dropped as a whole.
  FillCapacitySlots(CurrentCapacity());
  AddAuxLosses(opt_.group_tokens / T, k, noisy);

  // Super-class guidance (Mobile V-MoE): CE(clean router logits, super-class), per image, scaled
  // like the classification loss so P ranks sum to 1 rank's value.
  if (!ctx_.training || opt_.superclass_weight <= 0.f) return;
  CHECK(ctx_.superclass != nullptr) << name_ << ": super-class guidance needs super-class labels";
  CHECK_EQ(static_cast<int64_t>(ctx_.superclass->size()), B) << name_ << ": one label per image";
  CHECK_GT(ctx_.image_loss_scale, 0.f) << name_ << ": image_loss_scale not set";
  const float w = opt_.superclass_weight * ctx_.image_loss_scale;
  for (int64_t i = 0; i < B; ++i) {
    const int c = (*ctx_.superclass)[i];
    CHECK(c >= 0 && c < E) << name_ << ": super-class " << c << " of image " << i
                           << " is not an expert id in [0, " << E << ")";
    const float* p = R.probs_clean.data() + i * E;
    const double ce = -std::log(std::max(static_cast<double>(p[c]), 1e-30));
    metrics_.superclass_loss += ce;
    metrics_.aux_loss += w * ce;
    if (std::max_element(p, p + E) - p == c) ++metrics_.superclass_correct;
    for (int e = 0; e < E; ++e)
      R.d_clean_logits_aux[i * E + e] += w * (p[e] - (e == c ? 1.f : 0.f));
  }
}

// Mobile V-MoE's shared router decided for this layer: spread each image's experts and gates
// over its tokens and fill capacity as RoutePerImage does (an image is kept or dropped whole).
void MoeLayer::RouteExternalDecision() {
  Routing& R = *routing_;
  CHECK(external_ != nullptr) << name_ << ": no external decision set (SetExternalDecision)";
  const int k = R.kc;
  const int64_t T = opt_.tokens_per_image, B = R.router_rows;
  CHECK_EQ(static_cast<int64_t>(external_->expert.size()), B * k) << name_ << ": decision size";
  CHECK_EQ(static_cast<int64_t>(external_->gate.size()), B * k) << name_ << ": gate size";
  R.expert.resize(R.rows * k);
  R.gate.resize(R.rows * k);
  for (int64_t t = 0; t < R.rows; ++t)
    for (int r = 0; r < k; ++r) {
      const int e = external_->expert[(t / T) * k + r];
      CHECK(e >= 0 && e < opt_.num_experts) << name_ << ": expert " << e << " out of range";
      R.expert[t * k + r] = e;
      R.gate[t * k + r] = external_->gate[(t / T) * k + r];
    }
  FillCapacitySlots(CurrentCapacity());
}

}  // namespace moe
