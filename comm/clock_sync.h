// A common clock for the ranks of a job: each rank's offset to rank 0's steady clock, so that
// common time = local steady time + offset (rank 0's offset is 0).
//
// Measured once at start-up by ping-pongs with rank 0 (Cristian's method): a rank sends its local
// time t0, rank 0 answers with its own time t_root, the answer arrives at local t1. The true
// offset lies in [t_root - t1, t_root - t0]; the estimate is the middle, so its error is at most
// half the round trip. Of `rounds` samples the one with the shortest round trip is kept. Ranks
// are served one after the other. Clock drift over a run is not modelled (steady clocks on one
// host are the same clock; across hosts, drift of ~10 ppm adds ~10 us per second of run).
#pragma once

#include <mpi.h>

#include <functional>

namespace moe {

struct ClockOffset {
  double offset_us = 0;     // common = local + offset_us
  double error_us = 0;      // |estimate - true offset| <= error_us (half the kept round trip)
};

// Collective over `comm` (every rank calls it). local_now_us reads the clock to align; the
// default is Profiler::NowMicros (the profiler's steady clock). rounds must be >= 1.
ClockOffset SyncClockToRoot(MPI_Comm comm, int rounds = 8,
                            const std::function<double()>& local_now_us = nullptr);

}  // namespace moe
