// One Chrome trace (Perfetto) of every rank on the common clock: world rank 0 gathers each
// rank's events (pid = rank), shifted so that ts = common time - the earliest rank's trace
// origin. Unlike the per-rank traces (each from its own start), tracks line up: a rank's wait in
// an all-to-all sits under the late rank's work. Memory: each rank sends its kept events (the
// profiler caps them); rank 0 holds them all once, as text, while writing.
#pragma once

#include <string>

#include "comm/mpi_communicator.h"
#include "core/profiler.h"

namespace moe {

// The merged trace JSON on world rank 0; empty elsewhere. Collective over the world.
std::string GatherMergedTrace(const Profiler& profiler, MpiCommunicator* comm);

// Gathers and writes it to `path` on world rank 0 (checked like WriteChromeTrace). Collective;
// returns true on the other ranks.
bool WriteMergedTrace(const Profiler& profiler, MpiCommunicator* comm, const std::string& path,
                      std::string* error);

}  // namespace moe
