// The end-of-run communication profile: per phase, the time per training step as min / mean /
// max over ranks, and the bytes each rank moved per step. Collective: every rank must call it.
#pragma once

#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/profiler.h"

namespace moe {

// The phases in the order a reader follows a step through the MoE layer.
const std::vector<std::string>& ProfiledPhases();

std::string FormatProfileAcrossRanks(const Profiler& profiler, int64_t steps, Communicator* comm);

}  // namespace moe
