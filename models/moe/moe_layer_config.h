// The config (proto::MoeConfig inside proto::ModelConfig) -> MoeLayerOptions: the one mapping
// every family that builds MoE layers uses.
#pragma once

#include <cstdint>

#include "models/moe/moe_options.h"
#include "proto/moe_ep.pb.h"

namespace moe {

// Translates the MoE part of the config into layer options for a layer whose rows are
// `tokens_per_image` per image, `dim` wide, with expert hidden width `hidden` (the routing
// group is moe.group_size_images images).
MoeLayerOptions MoeOptionsFromConfig(const proto::ModelConfig& model, int dim, int hidden,
                                     int64_t tokens_per_image);
// A ViT's own MoE MLP options (dim = hidden_dim, hidden = expert_hidden_dim or mlp_dim).
MoeLayerOptions MoeOptionsFromConfig(const proto::ModelConfig& model);

}  // namespace moe
