// Attribute routing (Uni-Perceiver-MoE, Zhu et al. 2022): the router scores
// LayerNorm(Linear(attribute bits)) of each row -- task, modality, token type -- (plus the token
// itself with attribute_with_token) instead of the token; then token top-k with the k gates
// always renormalised to sum to 1.
#include <glog/logging.h>

#include "models/moe/routing_rule_registry.h"
#include "models/moe/rules/token_top_k.h"

namespace moe {

namespace {

class AttributeRule : public TokenTopKRule {
 public:
  const char* name() const override { return "attribute"; }
  bool SupportsLearnedNoise() const override { return false; }
  bool DecidesOnDevice(const MoeLayerOptions&) const override { return false; }
  RouterInputKind router_input() const override { return RouterInputKind::kAttributes; }
  bool RenormalisedGates(const MoeLayerOptions&) const override { return true; }
  void Validate(const std::string& layer, const MoeLayerOptions& o) const override {
    CHECK_GT(o.attribute_dim, 0) << layer << ": attribute routing needs attribute_dim";
  }
};

}  // namespace

std::unique_ptr<RoutingRuleImpl> MakeAttributeRule() { return std::make_unique<AttributeRule>(); }

}  // namespace moe
