// Expert choice (Zhou et al. 2022): softmax over the experts per token, then each expert takes the
// C tokens of the group with the highest probability for it (C from the capacity factor with
// k = 1). A token gets 0..E experts; every slot is full, so nothing is dropped; gate(t, e) =
// probs(t, e) wherever expert e took token t. top_k is unused.
#include <algorithm>

#include "models/moe/capacity.h"
#include "models/moe/routing_rule_registry.h"
#include "models/moe/rule_selections.h"

namespace moe {

namespace {

class ExpertChoiceRule : public RoutingRuleImpl {
 public:
  const char* name() const override { return "expert_choice"; }
  bool RowsPickExperts() const override { return false; }
  int ChoicesPerRow(const MoeLayerOptions& o) const override { return o.num_experts; }
  int64_t Capacity(const MoeLayerOptions& o, double cf) const override {
    return std::min<int64_t>(o.group_tokens,
                             CapacityPerExpert(1, o.group_tokens, cf, o.num_experts, o.rounding));
  }

  // E experts x C = n c / E slots each: c per row.
  double ExpertVisitsPerRow(const MoeLayerOptions& o) const override {
    return o.capacity_factor_eval;
  }

  void Decide(RuleContext& c) const override {
    RoutingState& R = c.R;
    const int E = c.opt.num_experts;
    const int64_t n = c.opt.group_tokens, C = c.capacity;
    const bool noisy = c.noisy;
    StartExpertSidePlan(E, &R);
    std::vector<int64_t> token(E * C);
    std::vector<float> gate(E * C);
    for (int64_t g = 0; g < R.groups; ++g) {
      ExpertChoiceSelect(R.probs.data() + g * n * E, n, E, C, token.data(), gate.data());
      for (int e = 0; e < E; ++e)
        for (int64_t i = 0; i < C; ++i) {
          const int64_t t = g * n + token[e * C + i];
          R.slot[t * E + e] = static_cast<int>(i);
          R.gate[t * E + e] = gate[e * C + i];
        }
    }
    FinishExpertSidePlan(E, C, &R, &c.metrics);
    c.router.AuxLosses(c.ctx, n, 1, noisy, &R, &c.metrics);
  }

  void GateBackward(RuleContext& c, const std::vector<float>& d_gate, std::vector<float>* d_probs,
                    std::vector<float>* d_logits) const override {
    (void)d_logits;
    const RoutingState& R = c.R;
    const int E = c.opt.num_experts;
    for (int64_t t = 0; t < R.rows; ++t)
      for (int e = 0; e < E; ++e)
        if (R.slot[t * E + e] >= 0) (*d_probs)[t * E + e] += d_gate[t * E + e];
  }
};

}  // namespace

std::unique_ptr<RoutingRuleImpl> MakeExpertChoiceRule() {
  return std::make_unique<ExpertChoiceRule>();
}

}  // namespace moe
