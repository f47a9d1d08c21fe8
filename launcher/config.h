// Loading and checking a TrainConfig. Errors are returned, never CHECK-failed: the launcher must
// agree on them across ranks and end the job together with one clear message.
#pragma once

#include <string>
#include <vector>

#include "proto/moe_ep.pb.h"

namespace moe {

// Parses protobuf text format from `path`, then merges `overrides` (also text format, e.g.
// "steps: 20 model { moe { top_k: 1 } }") on top. Unknown fields and syntax errors name the
// file, line and column.
bool LoadTrainConfig(const std::string& path, const std::string& overrides,
                     proto::TrainConfig* config, std::string* error);

// Every semantic problem, one message each, naming the field and its value.
std::vector<std::string> ValidateTrainConfig(const proto::TrainConfig& config, int world_size);

// Stable 64-bit hash of the config's deterministic serialisation: compared over the world so
// that ranks holding different configs fail together at start-up.
uint64_t ConfigHash(const proto::TrainConfig& config);

}  // namespace moe
