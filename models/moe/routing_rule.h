// A routing rule: how the router's scores become the plan -- for each row, its choices (expert,
// capacity slot, gate) -- and, backward, how d(gate) becomes d(router probabilities / logits).
// One class per rule, one file per rule under rules/, both directions in that file; the registry
// (routing_rule_registry.h) creates them from RoutingRule. A rule never touches the tokens:
// dispatch, all-to-all, experts and combine are the same for every rule (token_dispatcher.h).
//
// Forward, on host arrays: the router (router.h) has set R.clean_logits [router rows, E] and, from
// them, R.noisy_logits and R.probs (noise + softmax; clean ones in R.probs_clean); Decide fills
// R.expert / R.slot / R.gate
// [rows * kc] (slot -1: dropped or not taken), R.block_rows [E * G] (rows per send block: the
// capacity, or the exact count when dropless), the metrics, and the auxiliary losses
// (Router::AuxLosses). Backward: GateBackward adds d(objective)/d(probs) and /d(noisy logits)
// for the plan's gates; the router takes it from there (Router::CleanLogitsGrad, ApplyGrad).
//
// Adding a rule: one file in rules/ with a RoutingRuleImpl subclass and one line in the
// registry's table (models/moe/README.md, "Adding a routing rule"). It then runs on the CPU
// path and on the CUDA path (which takes host-decided plans for every rule but device top-k).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "models/moe/moe_options.h"
#include "models/moe/router.h"
#include "models/moe/routing_state.h"

namespace moe {

// What a rule reads and writes during one Forward and its Backward.
struct RuleContext {
  const std::string& layer;      // the layer's name, for messages
  const MoeLayerOptions& opt;
  const MoeStepContext& ctx;
  const Router& router;
  RoutingState& R;
  MoeMetrics& metrics;
  int64_t capacity;                          // the layer's CurrentCapacity(); -1 when dropless
  const ExternalImageDecision* external;    // options.external_decision only
  bool noisy;  // the router's training noise is on (R.probs are of the noisy logits)
};

class RoutingRuleImpl {
 public:
  virtual ~RoutingRuleImpl() = default;
  virtual const char* name() const = 0;

  // Options this rule cannot serve: a CHECK failure naming the layer, the field and the value.
  virtual void Validate(const std::string& layer, const MoeLayerOptions& o) const {
    (void)layer;
    (void)o;
  }
  // Rows pick experts (top-k per row, capacity can overflow: drops, dropless, the gate losses
  // apply), or experts pick rows (every slot full by construction).
  virtual bool RowsPickExperts() const { return true; }
  // Whether Shazeer's learned noise std fits the rule (its gates and load estimator).
  virtual bool SupportsLearnedNoise() const { return false; }
  // What the router scores.
  virtual RouterInputKind router_input() const { return RouterInputKind::kToken; }
  // Choices per row in the plan (kc): top_k for rules where rows pick experts, E where experts
  // pick rows (choice r is expert r).
  virtual int ChoicesPerRow(const MoeLayerOptions& o) const { return o.top_k; }
  // Rows per (group, expert) send block for capacity factor cf.
  virtual int64_t Capacity(const MoeLayerOptions& o, double cf) const;
  // Experts a routed row visits on average at evaluation capacity (what the FLOPs count charges).
  virtual double ExpertVisitsPerRow(const MoeLayerOptions& o) const { return o.top_k; }
  // Whether the plan's k gates are renormalised (a softmax over the kept k logits).
  virtual bool RenormalisedGates(const MoeLayerOptions& o) const;
  // Whether the CUDA path may decide this rule with its device kernels (plain token top-k);
  // otherwise the CUDA path decides on the host with Decide and uploads the plan.
  virtual bool DecidesOnDevice(const MoeLayerOptions& o) const {
    (void)o;
    return false;
  }

  virtual void Decide(RuleContext& c) const = 0;
  // d_gate [rows * kc] (combine's plus the gate aux losses') -> += d_probs, d_logits
  // [router rows, E] (w.r.t. the noisy probabilities and the noisy logits).
  virtual void GateBackward(RuleContext& c, const std::vector<float>& d_gate,
                            std::vector<float>* d_probs, std::vector<float>* d_logits) const = 0;
};

// Checks every rule shares (top_k range, learned noise and the balance-squared loss only where a
// rule reads k gates per router row, dropless only where slots can overflow), then the rule's own.
void ValidateRoutingOptions(const RoutingRuleImpl& rule, const std::string& layer,
                            const MoeLayerOptions& o);

// ---- helpers the rules share (routing_rule.cc) ----

// The k gates of each row: the kept softmax values (V-MoE), or renormalised to sum to 1 (the
// softmax over the kept k logits: Shazeer's softmax(KeepTopK(H, k)), Uni-Perceiver-MoE's top-2).
void TopKGates(const float* probs, int64_t rows, int E, int k, bool renormalise, int* expert,
               float* gate);
// TopKGates' backward for one row: d(gate) of its k choices -> += d(probs) at the chosen experts.
void TopKGatesBackward(const float* probs_row, const int* expert, const float* gate,
                       const float* d_gate, int k, bool renormalised, float* d_probs_row);
// BatchPrioritizedOrder's permutation (slot_assignment.h: gate[t*k] descending, ties by the lower
// token, NaN last) from a stable radix sort of the gate's order-preserving bits: the order the
// CUDA path gets by sorting unique 64-bit (bits, token) keys; no comparator, no stable merge.
std::vector<int64_t> BatchPrioritizedOrderByKeys(const float* gate, int64_t n, int k);

// V-MoE capacity fill for rules where rows pick experts; R.expert / R.gate must be set
// ([rows * k]): every row's 1st choice before any 2nd, in token or BPR order, the rest dropped.
void FillCapacitySlots(const MoeLayerOptions& o, int64_t capacity, RoutingState* R,
                       MoeMetrics* m);
// Rules where experts pick rows (kc = E): R.expert[t * E + e] = e, no slot, no gate.
void StartExpertSidePlan(int E, RoutingState* R);
// Their block sizes and metrics: every expert's C slots of every group are full.
void FinishExpertSidePlan(int E, int64_t capacity, RoutingState* R, MoeMetrics* m);

}  // namespace moe
