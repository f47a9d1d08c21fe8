// Arithmetic of the all-to-all profile, free of MPI so it can be checked by hand:
// bandwidths in the nccl-tests convention and the split of each call into skew and transfer.
#pragma once

#include <cstdint>
#include <vector>

#include "core/profiler.h"

namespace moe {

// nccl-tests, all-to-all: algbw = bytes / seconds, bytes = the data one rank sends (its own
// block included); busbw = algbw * (n - 1) / n for a group of n ranks (the share that crosses
// links). Both in bytes per second; 0 when seconds <= 0 or n < 1.
double AllToAllAlgBandwidth(double bytes, double seconds);
double AllToAllBusBandwidth(double algbw, int n);

// One phase's calls on one group: per rank of the group, the mean skew (last arrival in the
// group minus this rank's arrival) and mean transfer (this rank's departure minus the last
// arrival, clamped at 0) per call, in microseconds, and how often each rank arrived last.
struct ExchangeSplit {
  int64_t calls = 0;
  std::vector<double> mean_skew_us;
  std::vector<double> mean_transfer_us;
  std::vector<int64_t> arrived_last;
};

// times[r][i]: call i of group rank r on the common clock. Every rank must hold the same number
// of calls (the i-th entries are the same collective), CHECK-fails otherwise. Ties for the last
// arrival go to the lowest rank.
ExchangeSplit SplitSkewTransfer(const std::vector<std::vector<Profiler::ExchangeTimes>>& times);

}  // namespace moe
