#include "models/moe/routing_rule_registry.h"

#include <glog/logging.h>

#include <sstream>
#include <string>

namespace moe {

namespace {

struct RegisteredRule {
  RoutingRule id;
  proto::MoeConfig::RoutingRule config_value;
  std::unique_ptr<RoutingRuleImpl> (*make)();
};

// One line per rule.
const RegisteredRule kRules[] = {
    {RoutingRule::kTokenTopK, proto::MoeConfig::TOKEN_TOP_K, MakeTokenTopKRule},
    {RoutingRule::kExpertChoice, proto::MoeConfig::EXPERT_CHOICE, MakeExpertChoiceRule},
    {RoutingRule::kPatchTopL, proto::MoeConfig::PATCH_TOP_L, MakePatchTopLRule},
    {RoutingRule::kPerImage, proto::MoeConfig::PER_IMAGE, MakePerImageRule},
    {RoutingRule::kAttribute, proto::MoeConfig::ATTRIBUTE, MakeAttributeRule},
};

std::string KnownRules() {
  std::ostringstream s;
  for (const RegisteredRule& r : kRules)
    s << (&r == kRules ? "" : ", ") << proto::MoeConfig::RoutingRule_Name(r.config_value);
  return s.str();
}

}  // namespace

std::unique_ptr<RoutingRuleImpl> MakeRoutingRule(RoutingRule id) {
  for (const RegisteredRule& r : kRules)
    if (r.id == id) return r.make();
  LOG(FATAL) << "unknown routing rule " << static_cast<int>(id) << " (known: " << KnownRules()
             << ")";
  return nullptr;
}

RoutingRule RoutingRuleFromConfig(proto::MoeConfig::RoutingRule value) {
  for (const RegisteredRule& r : kRules)
    if (r.config_value == value) return r.id;
  LOG(FATAL) << "model.moe.routing=" << static_cast<int>(value)
             << ": no routing rule registered for it (known: " << KnownRules() << ")";
  return RoutingRule::kTokenTopK;
}

const char* RoutingRuleName(RoutingRule rule) {
  for (const RegisteredRule& r : kRules)
    if (r.id == rule) return r.make()->name();
  return "?";
}

}  // namespace moe
