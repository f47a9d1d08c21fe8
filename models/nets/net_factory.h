// Builds the Net of the configured family and checks the family's own config fields.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "models/nets/net.h"
#include "proto/moe_ep.pb.h"

namespace moe {

// The families model.family may name: "vit" (ViT / V-MoE), "mixer" (MLP-Mixer / Sparse-MLP),
// "pmoe" (CNN / pMoE), "mobile_vmoe" (ViT / Mobile V-MoE), "conditional" (ViT / conditional MoE).
const std::vector<std::string>& NetFamilies();

// Appends one "config error: field=value: why" line per problem in the family's fields.
void ValidateNetConfig(const proto::TrainConfig& config, std::vector<std::string>* errors);

std::unique_ptr<Net> CreateNet(const proto::TrainConfig& config, Communicator* comm);

}  // namespace moe
