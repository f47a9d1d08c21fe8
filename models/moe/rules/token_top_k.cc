// Token top-k (V-MoE, Riquelme et al. 2021): softmax over the experts per token, each token's k
// best experts; capacity slots go to every token's 1st choice before any 2nd choice, in token
// order or in Batch Prioritized Routing order (highest gate first), the rest are dropped. The
// gates are the kept softmax values, not renormalised (unless renormalise_gates or learned noise).
#include "models/moe/rules/token_top_k.h"

#include "models/moe/routing_rule_registry.h"

namespace moe {

void TokenTopKRule::Decide(RuleContext& c) const {
  RoutingState& R = c.R;
  const int k = R.kc;
  const bool noisy = c.noisy;
  R.expert.resize(R.rows * k);
  R.gate.resize(R.rows * k);
  TopKGates(R.probs.data(), R.rows, c.opt.num_experts, k, RenormalisedGates(c.opt),
            R.expert.data(), R.gate.data());
  FillCapacitySlots(c.opt, c.capacity, &R, &c.metrics);
  c.router.AuxLosses(c.ctx, c.opt.group_tokens, k, noisy, &R, &c.metrics);
}

// Slots are piecewise constant: only the gates carry gradient, each to its own probability.
void TokenTopKRule::GateBackward(RuleContext& c, const std::vector<float>& d_gate,
                                 std::vector<float>* d_probs, std::vector<float>* d_logits) const {
  (void)d_logits;
  const RoutingState& R = c.R;
  const int E = c.opt.num_experts, kc = R.kc;
  const bool renormalised = RenormalisedGates(c.opt);
  for (int64_t t = 0; t < R.rows; ++t)
    TopKGatesBackward(R.probs.data() + t * E, R.expert.data() + t * kc, R.gate.data() + t * kc,
                      d_gate.data() + t * kc, kc, renormalised, d_probs->data() + t * E);
}

}  // namespace moe

namespace moe {
std::unique_ptr<RoutingRuleImpl> MakeTokenTopKRule() { return std::make_unique<TokenTopKRule>(); }
}  // namespace moe
