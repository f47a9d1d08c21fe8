// Builds the Net of the configured family and its TaskHead, and checks the family's own config
// fields.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "models/nets/net.h"
#include "models/nets/task_head.h"
#include "proto/moe_ep.pb.h"

namespace moe {

// The families model.family may name: "vit" (ViT / V-MoE), "mixer" (MLP-Mixer / Sparse-MLP),
// "pmoe" (CNN / pMoE), "mobile_vmoe" (ViT / Mobile V-MoE), "conditional" (ViT / conditional MoE).
const std::vector<std::string>& NetFamilies();

// Appends one "config error: field=value: why" line per problem in the family's fields, and
// then, when there is none, the task head's (e.g. an unreadable super-class file).
void ValidateNetConfig(const proto::TrainConfig& config, std::vector<std::string>* errors);

std::unique_ptr<Net> CreateNet(const proto::TrainConfig& config, Communicator* comm);
// config.parallel's dispatcher fields -> every MoE layer's DispatcherOptions (CreateNet sets them).
DispatcherOptions DispatcherOptionsFromConfig(const proto::ParallelConfig& parallel);

// What the family's logits are trained and scored against: a SingleTaskHead, or the family's
// own (the conditional family's MultiTaskHead). The config must have passed ValidateNetConfig.
std::unique_ptr<TaskHead> CreateTaskHead(const proto::TrainConfig& config);

}  // namespace moe
