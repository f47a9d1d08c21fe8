// The routing-rule registry: the one place that maps a rule's id (RoutingRule, and the config's
// MoeConfig.routing value) to its class. Every rule lives in rules/<name>.cc; nothing outside this
// registry branches on the rule.
#pragma once

#include <memory>

#include "models/moe/moe_options.h"
#include "models/moe/routing_rule.h"
#include "proto/moe_ep.pb.h"

namespace moe {

// The rule's class; an id missing from the table is a fatal error that lists the known rules.
std::unique_ptr<RoutingRuleImpl> MakeRoutingRule(RoutingRule id);
// The config's enum value -> RoutingRule (fatal, with the known values, if unregistered).
RoutingRule RoutingRuleFromConfig(proto::MoeConfig::RoutingRule value);

// The factories, one per rules/<name>.cc.
std::unique_ptr<RoutingRuleImpl> MakeTokenTopKRule();
std::unique_ptr<RoutingRuleImpl> MakeExpertChoiceRule();
std::unique_ptr<RoutingRuleImpl> MakePatchTopLRule();
std::unique_ptr<RoutingRuleImpl> MakePerImageRule();
std::unique_ptr<RoutingRuleImpl> MakeAttributeRule();

}  // namespace moe
