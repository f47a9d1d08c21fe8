// Loading and checking a TrainConfig. Errors are returned, never CHECK-failed: the launcher must
// agree on them across ranks and end the job together with one clear message.
#pragma once

#include <string>
#include <vector>

#include "proto/moe_ep.pb.h"

namespace moe {

// Parses protobuf text format from `path`, then merges `overrides` (also text format, e.g.
// "steps: 20 model { moe { top_k: 1 } }") on top. Unknown fields and syntax errors name the
// file, line and column; a file that sets no field at all (empty, only comments) is an error.
bool LoadTrainConfig(const std::string& path, const std::string& overrides,
                     proto::TrainConfig* config, std::string* error);

// Fields whose value depends on the job's size: `parallel.ep_size: 0` means every rank of the job
// (EP = world size, no data parallelism), so one config runs on 2 or 4 ranks unchanged. The
// launchers call this once, before validating; checkpoints and the config hash see the result.
void ResolveWorldSizeFields(int world_size, proto::TrainConfig* config);

// Every semantic problem, one message per field: "config error: <field.path>=<value>: <why>".
// Every numeric field of proto/moe_ep.proto has its range checked (NaN and infinities
// included), whether or not the family in use reads it; cross-field checks (divisibility, k <= E)
// apply where the fields are used. Memory needs are checked separately (memory_estimate.h).
// `config` is taken as ResolveWorldSizeFields would leave it for `world_size`.
std::vector<std::string> ValidateTrainConfig(const proto::TrainConfig& config, int world_size);

// Stable 64-bit hash of the config's deterministic serialisation: compared over the world so
// that ranks holding different configs fail together at start-up.
uint64_t ConfigHash(const proto::TrainConfig& config);

}  // namespace moe
