#include "comm/clock_sync.h"

#include <glog/logging.h>

#include <limits>

#include "comm/mpi_check.h"
#include "core/profiler.h"

namespace moe {
namespace {

constexpr int kPingTag = 7301;
constexpr int kPongTag = 7302;

// Rank 0's side: answer `rounds` pings from `peer` with the root's clock.
void ServePeer(MPI_Comm comm, int peer, int rounds, const std::function<double()>& now) {
  for (int i = 0; i < rounds; ++i) {
    double ping = 0;
    MPI_CHECK(MPI_Recv(&ping, 1, MPI_DOUBLE, peer, kPingTag, comm, MPI_STATUS_IGNORE));
    const double t_root = now();
    MPI_CHECK(MPI_Send(&t_root, 1, MPI_DOUBLE, peer, kPongTag, comm));
  }
}

// A non-root rank's side: the minimum-round-trip sample of `rounds` ping-pongs.
ClockOffset PingRoot(MPI_Comm comm, int rounds, const std::function<double()>& now) {
  ClockOffset best;
  double best_rtt = std::numeric_limits<double>::infinity();
  for (int i = 0; i < rounds; ++i) {
    const double t0 = now();
    MPI_CHECK(MPI_Send(&t0, 1, MPI_DOUBLE, 0, kPingTag, comm));
    double t_root = 0;
    MPI_CHECK(MPI_Recv(&t_root, 1, MPI_DOUBLE, 0, kPongTag, comm, MPI_STATUS_IGNORE));
    const double t1 = now();
    if (t1 - t0 < best_rtt) {
      best_rtt = t1 - t0;
      best.offset_us = t_root - 0.5 * (t0 + t1);
      best.error_us = 0.5 * best_rtt;
    }
  }
  return best;
}

}  // namespace

ClockOffset SyncClockToRoot(MPI_Comm comm, int rounds,
                            const std::function<double()>& local_now_us) {
  CHECK_GE(rounds, 1) << "SyncClockToRoot: rounds must be >= 1, got " << rounds;
  const std::function<double()> now =
      local_now_us ? local_now_us : std::function<double()>(&Profiler::NowMicros);
  int rank = 0, size = 1;
  MPI_CHECK(MPI_Comm_rank(comm, &rank));
  MPI_CHECK(MPI_Comm_size(comm, &size));
  ClockOffset mine;
  for (int peer = 1; peer < size; ++peer) {
    if (rank == 0) ServePeer(comm, peer, rounds, now);
    else if (rank == peer) mine = PingRoot(comm, rounds, now);
  }
  return mine;
}

}  // namespace moe
