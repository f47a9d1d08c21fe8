#include "models/moe/moe_layer_config.h"

#include "models/moe/routing_rule_registry.h"

namespace moe {

MoeLayerOptions MoeOptionsFromConfig(const proto::ModelConfig& model) {
  const int p = model.patch_size();
  const int64_t tokens = static_cast<int64_t>(model.image_size() / p) * (model.image_size() / p);
  const int hidden =
      model.moe().expert_hidden_dim() > 0 ? model.moe().expert_hidden_dim() : model.mlp_dim();
  return MoeOptionsFromConfig(model, model.hidden_dim(), hidden, tokens);
}

MoeLayerOptions MoeOptionsFromConfig(const proto::ModelConfig& model, int dim, int hidden,
                                     int64_t tokens) {
  const proto::MoeConfig& m = model.moe();
  MoeLayerOptions o;
  o.dim = dim;
  o.hidden = hidden;
  o.num_experts = m.num_experts();
  o.top_k = m.top_k();
  o.tokens_per_image = tokens;
  o.group_tokens = tokens * m.group_size_images();
  o.capacity_factor_train = m.capacity_factor_train();
  o.capacity_factor_eval = m.capacity_factor_eval();
  switch (m.capacity_rounding()) {
    case proto::MoeConfig::CEIL: o.rounding = CapacityRounding::kCeil; break;
    case proto::MoeConfig::ROUND: o.rounding = CapacityRounding::kRound; break;
    case proto::MoeConfig::CEIL_MULTIPLE_OF_4:
      o.rounding = CapacityRounding::kCeilMultipleOf4;
      break;
  }
  o.batch_prioritized = m.batch_prioritized_routing();
  o.dropless = m.dropless();
  o.noise_scale = m.router_noise_scale();
  o.importance_weight = m.importance_loss_weight();
  o.load_weight = m.load_loss_weight();
  o.switch_weight = m.switch_loss_weight();
  o.z_weight = m.z_loss_weight();
  o.noise = m.router_noise() == proto::MoeConfig::LEARNED_SOFTPLUS ? RouterNoise::kLearnedSoftplus
                                                                   : RouterNoise::kFixed;
  o.balance_sq_weight = m.balance_sq_loss_weight();
  o.rule = RoutingRuleFromConfig(m.routing());
  o.patch_top_l = m.patch_top_l();
  o.patch_gate_over_all = m.patch_gate_over_all();
  o.renormalise_gates = m.renormalise_gates();
  o.superclass_weight = m.superclass_loss_weight();
  o.attribute_with_token = m.attribute_with_token();
  return o;
}

}  // namespace moe
