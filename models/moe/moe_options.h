// The options, per-step context and metrics of an MoE layer: what a caller sets and reads,
// apart from the layer itself (moe_layer.h) and the routing rules that interpret them
// (routing_rule.h, rules/).
#pragma once

#include <cstdint>
#include <vector>

#include "core/profiler.h"
#include "core/tensor.h"
#include "models/moe/capacity.h"

namespace moe {

// How the router turns its input into (row, expert, slot, gate) assignments. One MoE layer
// serves every family; a rule changes only the router and the slot assignment, never the
// dispatch, all-to-all, experts or combine (rules/, one file per rule: routing_rule.h).
enum class RoutingRule {
  kTokenTopK,     // V-MoE: softmax top-k per token, 1st choices fill before 2nd, BPR optional
  kExpertChoice,  // Zhou 2022: each expert takes its top-C tokens of the group (C from the
                  // capacity factor with k = 1); a token gets 0..E experts; top_k is unused
  kPatchTopL,     // pMoE: expert s's router keeps its own top-l patches of every image; gate =
                  // softmax over the kept scores (or over all patches, kept unnormalised)
  kPerImage,      // Mobile V-MoE: one decision per image from the mean of its tokens; capacity
                  // counts whole images; optional super-class guidance of the router
  kAttribute,     // Uni-Perceiver-MoE: router input LayerNorm(Linear(attribute bits)) (plus
                  // the token, optionally); top-k gates renormalised to sum to 1
};

const char* RoutingRuleName(RoutingRule rule);

// The router's training noise on the clean logits h = x W_r, per (row, expert), drawn from a
// counter-based RNG keyed on (layer, step, global group, row, expert).
enum class RouterNoise {
  kFixed,            // V-MoE: h + N(0, 1) * noise_scale / E
  kLearnedSoftplus,  // Shazeer et al. 2017: h + N(0, 1) * softplus(x W_noise), W_noise learned
                     // (zero at init); gates are a softmax over the kept k (renormalised)
};

struct MoeLayerOptions {
  int dim = 0;
  int hidden = 0;
  int num_experts = 8;
  int top_k = 2;
  int64_t group_tokens = 0;  // rows per routing group
  double capacity_factor_train = 1.05;
  double capacity_factor_eval = 1.25;
  CapacityRounding rounding = CapacityRounding::kCeil;
  bool batch_prioritized = false;
  bool dropless = false;
  float noise_scale = 1.f;  // noise std = noise_scale / num_experts
  float importance_weight = 0.005f;
  float load_weight = 0.005f;
  float switch_weight = 0.f;
  float z_weight = 0.f;
  // kLearnedSoftplus: token top-k only, without the load loss (whose estimator assumes the
  // fixed std); noise_scale is unused.
  RouterNoise noise = RouterNoise::kFixed;
  // Seed 004's balance loss sum_e (1/E - mean over a group's router rows of G_e)^2, G the gates
  // of the kept k (0 elsewhere); token-side rules (kTokenTopK, kAttribute, kPerImage).
  float balance_sq_weight = 0.f;

  RoutingRule rule = RoutingRule::kTokenTopK;
  // kPatchTopL and kPerImage: rows per image (a routing group holds whole images).
  int64_t tokens_per_image = 0;
  // kPatchTopL: patches each expert keeps per image (l < tokens_per_image), the gate form, and
  // hard gates (pMoE's second phase: every kept patch weighs 1, the router gets no gradient).
  int patch_top_l = 0;
  bool patch_gate_over_all = false;  // false: softmax over the kept l (pMoE MNIST version)
  bool hard_gates = false;
  // Renormalise the k kept gates to sum to 1 (kAttribute always does; others may opt in).
  bool renormalise_gates = false;
  // kAttribute: attribute bits per row (MoeStepContext::attributes) and whether the router also
  // sees the token (router input = token + attribute embedding).
  int attribute_dim = 0;
  bool attribute_with_token = false;
  // kPerImage: weight of CE(clean router logits, super-class label) (Mobile V-MoE: 0.3);
  // super-class ids index experts, so they must lie in [0, num_experts).
  float superclass_weight = 0.f;
  // The experts' nonlinearity between fc1 and fc2 (ExpertBank): exact GELU, as ViT's MLP, for
  // every family but pMoE, whose two-layer CNN experts use ReLU (PmoeMoeOptions).
  enum class Activation { kGelu, kRelu };
  Activation expert_activation = Activation::kGelu;
  // kPerImage: the decision comes from outside (SetExternalDecision: Mobile V-MoE's shared
  // router, models/nets/mobile_vmoe.h). The layer then has no router parameter, no noise and no
  // aux losses of its own; superclass_weight only marks the layer that reports the guidance.
  bool external_decision = false;
};

// A per-image decision made outside the layer (options().external_decision), and where the
// layer's Backward returns the gradient of the gates it used.
struct ExternalImageDecision {
  std::vector<int> expert;    // [images * top_k], global expert ids, in image order
  std::vector<float> gate;    // [images * top_k]
  std::vector<float> d_gate;  // [images * top_k]; Backward ADDS d(objective)/d(gate) here
};

// What changes every step; set before Forward.
struct MoeStepContext {
  bool training = true;
  int64_t step = 0;
  int64_t first_global_group = 0;   // global id of this rank's first routing group
  int64_t num_global_groups = 1;    // groups in the global batch (aux losses are their mean)
  Profiler* profiler = nullptr;
  // Scale of per-image supervised router losses (the trainer's 1 / global batch, so that P
  // ranks sum to what 1 rank computes).
  float image_loss_scale = 0.f;
  // kPerImage with superclass_weight > 0: this rank's images' super-class ids (host, one per
  // image of the micro-batch, in row order).
  const std::vector<int>* superclass = nullptr;
  // kAttribute: [rows, attribute_dim] bits (0/1 floats), host, one row per input row.
  const Tensor* attributes = nullptr;
};

// Per-forward statistics, summed over this rank's groups (the trainer reduces over ranks).
struct MoeMetrics {
  std::vector<int64_t> tokens_per_expert;  // kept assignments per global expert
  int64_t assignments = 0;                 // tokens * k
  int64_t dropped = 0;                     // assignments that found their expert full
  int64_t capacity_slots = 0;              // slots offered (C * E * groups); 0 when dropless
  double aux_loss = 0;                     // weighted, already divided by num_global_groups
  double importance_loss = 0, load_loss = 0, switch_loss = 0, z_loss = 0;  // unweighted sums
  double balance_sq_loss = 0;                                             // unweighted sum
  double superclass_loss = 0;  // sum over images of CE(router logits, super-class), unweighted
  int64_t superclass_correct = 0;  // images whose router argmax is their super-class
  // Expert-side rules (expert choice, patch top-l) fill every slot, so nothing is "dropped";
  // what they leave out is rows that no expert took (their MoE output is 0).
  int64_t unrouted_rows = 0;
};

}  // namespace moe
