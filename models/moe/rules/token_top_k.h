// V-MoE's token top-k rule (also the base of attribute routing, which differs only in what the
// router scores and in always renormalising the gates).
#pragma once

#include "models/moe/routing_rule.h"

namespace moe {

class TokenTopKRule : public RoutingRuleImpl {
 public:
  const char* name() const override { return "token_top_k"; }
  bool SupportsLearnedNoise() const override { return true; }
  bool DecidesOnDevice(const MoeLayerOptions& o) const override { return !o.renormalise_gates; }
  void Decide(RuleContext& c) const override;
  void GateBackward(RuleContext& c, const std::vector<float>& d_gate, std::vector<float>* d_probs,
                    std::vector<float>* d_logits) const override;
};

}  // namespace moe
