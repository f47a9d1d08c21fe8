// The all-to-all part of the end-of-run profile: per all-to-all phase, bytes per rank and step,
// algbw / busbw (nccl-tests convention) and the time split into skew (waiting for the last rank
// of the EP group) and transfer (the rest), plus the straggler: the rank that arrived last most
// often. Built from the per-call arrival / departure times ScopedExchange records, put on the
// common clock (comm/clock_sync.h) and gathered to world rank 0 once, at the end.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "comm/mpi_communicator.h"
#include "core/profiler.h"
#include "launcher/run_summary.h"

namespace moe {

struct AllToAllProfile {
  std::vector<AllToAllRow> rows;  // one per all-to-all phase that ran; world rank 0 only
  int ep_size = 0;
  int straggler_rank = -1;
  double straggler_fraction = 0;
  int64_t calls_per_rank = 0;     // all-to-alls analysed per rank (the kept ones)
  std::vector<double> rank_skew_us;  // per world rank: mean skew per analysed call
  double max_clock_error_us = 0;  // the worst rank's clock-sync error bound
  std::string text;               // table and notes; world rank 0 only, empty when rows is
};

// The all-to-all phases, in the order a step runs them.
const std::vector<std::string>& AllToAllPhases();

// Collective over the world: every rank must call it. `steps` turns totals into per-step values.
AllToAllProfile ProfileAllToAlls(const Profiler& profiler, int64_t steps, MpiCommunicator* comm);

// The table and the notes under it (exposed for tests).
std::string FormatAllToAllTable(const AllToAllProfile& p);

}  // namespace moe
