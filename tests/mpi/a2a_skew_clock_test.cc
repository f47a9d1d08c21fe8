// The communication profile on 4 real ranks: the clock sync recovers known clock offsets, puts a
// barrier's arrivals and departures in causal order, the skew / transfer split blames a rank
// delayed on purpose, and the merged trace holds every rank's events.
#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "comm/clock_sync.h"
#include "comm/mpi_check.h"
#include "comm/mpi_communicator.h"
#include "core/profiler.h"
#include "launcher/a2a_profile.h"
#include "launcher/merged_trace.h"

namespace moe {
namespace {

int WorldRank() { int r; MPI_Comm_rank(MPI_COMM_WORLD, &r); return r; }
int WorldSize() { int s; MPI_Comm_size(MPI_COMM_WORLD, &s); return s; }

// Each rank's clock runs a known whole number of seconds off the shared host clock.
double ShiftUs(int rank) { return 1e6 * (3 * rank - 2); }

TEST(ClockSync, RecoversKnownOffsetsWithinHalfTheRoundTrip) {
  const int me = WorldRank();
  const ClockOffset c =
      SyncClockToRoot(MPI_COMM_WORLD, 8, [me] { return Profiler::NowMicros() + ShiftUs(me); });
  // All ranks read one host clock, so rank 0's reading lies inside each ping's round trip and
  // the midpoint estimate is off by at most half of it (error_us), up to double rounding.
  const double expected = ShiftUs(0) - ShiftUs(me);
  EXPECT_NEAR(c.offset_us, expected, c.error_us + 1e-3) << "rank " << me;
  if (me == 0) {
    EXPECT_EQ(c.error_us, 0);
  }
}

TEST(ClockSync, BarrierIsCausalOnTheCommonClock) {
  const int me = WorldRank(), n = WorldSize();
  auto now = [me] { return Profiler::NowMicros() + ShiftUs(me); };
  const ClockOffset c = SyncClockToRoot(MPI_COMM_WORLD, 8, now);
  double mine[3];
  mine[0] = now() + c.offset_us;
  MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
  mine[1] = now() + c.offset_us;
  mine[2] = c.error_us;
  std::vector<double> all(3 * n);
  MPI_CHECK(MPI_Allgather(mine, 3, MPI_DOUBLE, all.data(), 3, MPI_DOUBLE, MPI_COMM_WORLD));
  // Nobody leaves a barrier before everybody entered it: on a correct common clock each
  // departure follows every arrival, up to both ranks' sync errors. Wrong offsets (seconds
  // apart here) break it.
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j)
      EXPECT_GE(all[3 * i + 1] + all[3 * i + 2] + all[3 * j + 2] + 1e-3, all[3 * j])
          << "rank " << i << " left before rank " << j << " arrived";
}

constexpr int kDelayedRank = 2;
constexpr int kCalls = 20;
constexpr int kDelayMs = 30;

// kCalls all-to-alls in which kDelayedRank sleeps kDelayMs before arriving.
void RunDelayedExchanges(MpiCommunicator* comm, Profiler* prof) {
  const int n = comm->Size(GroupKind::kExpert);
  std::vector<int64_t> counts(n, 256);
  std::vector<float> send(256 * n, 1.0f), recv(256 * n);
  for (int i = 0; i < kCalls; ++i) {
    if (WorldRank() == kDelayedRank)
      std::this_thread::sleep_for(std::chrono::milliseconds(kDelayMs));
    ScopedExchange ex(prof, "a2a_dispatch", 256 * n * sizeof(float));
    comm->AllToAllV(send.data(), counts, recv.data(), counts, GroupKind::kExpert);
  }
}

TEST(AllToAllProfile, DelayedRankIsTheStraggler) {
  if (WorldSize() != 4) GTEST_SKIP() << "needs 4 ranks (rank 2 of an EP group of 4 is delayed)";
  MpiCommunicator comm(MPI_COMM_WORLD, 4);
  Profiler prof;
  const ClockOffset c = SyncClockToRoot(comm.comm(GroupKind::kWorld));
  prof.set_common_clock(c.offset_us, c.error_us);
  RunDelayedExchanges(&comm, &prof);
  const AllToAllProfile p = ProfileAllToAlls(prof, kCalls, &comm);
  if (WorldRank() != 0) return;
  ASSERT_EQ(p.rows.size(), 1u);
  EXPECT_EQ(p.calls_per_rank, kCalls);
  EXPECT_EQ(p.straggler_rank, kDelayedRank) << p.text;
  EXPECT_GT(p.straggler_fraction, 0.9) << p.text;
  // The midpoint between "waited the whole delay" and "waited not at all" separates the two;
  // the sync error (microseconds) and the exchange itself (well under a millisecond for 4 KiB
  // per peer) are far below it.
  const double half_delay_us = 0.5 * kDelayMs * 1e3;
  for (int r = 0; r < 4; ++r) {
    if (r == kDelayedRank) {
      EXPECT_LT(p.rank_skew_us[r], half_delay_us) << "rank " << r;
    } else {
      EXPECT_GT(p.rank_skew_us[r], half_delay_us) << "rank " << r << "\n" << p.text;
    }
  }
  // Skew and transfer split the time in the exchange: their sum is departure - arrival, which
  // the phase time exceeds only by two clock reads (well under 10 us); clamping a transfer at 0
  // can only move it by the two ranks' sync errors.
  const AllToAllRow& row = p.rows[0];
  const double bound_ms = 0.01 + 2 * p.max_clock_error_us * 1e-3;
  EXPECT_NEAR(row.skew_ms + row.transfer_ms, row.ms, bound_ms) << p.text;
  EXPECT_NE(p.text.find("rank 2 arrived last"), std::string::npos) << p.text;
}

TEST(MergedTrace, HoldsEveryRanksEventsOnOneTimeline) {
  if (WorldSize() != 4) GTEST_SKIP() << "needs 4 ranks (rank 2 of an EP group of 4 is delayed)";
  MpiCommunicator comm(MPI_COMM_WORLD, 4);
  Profiler prof;
  const ClockOffset c = SyncClockToRoot(comm.comm(GroupKind::kWorld));
  prof.set_common_clock(c.offset_us, c.error_us);
  RunDelayedExchanges(&comm, &prof);
  const std::string json = GatherMergedTrace(prof, &comm);
  if (WorldRank() != 0) {
    EXPECT_TRUE(json.empty());
    return;
  }
  EXPECT_EQ(json.rfind("{\"displayTimeUnit\"", 0), 0u);
  EXPECT_EQ(json.substr(json.size() - 4), "\n]}\n");
  for (int r = 0; r < 4; ++r) {
    const std::string track = "\"args\":{\"name\":\"rank " + std::to_string(r) + "\"}";
    EXPECT_NE(json.find(track), std::string::npos) << "no track for rank " << r;
    size_t n = 0;
    const std::string pid = ",\"pid\":" + std::to_string(r) + ",\"tid\":0,\"args\":{\"bytes\"";
    for (size_t at = json.find(pid); at != std::string::npos; at = json.find(pid, at + 1)) ++n;
    EXPECT_EQ(n, static_cast<size_t>(kCalls)) << "rank " << r << " events";
  }
}

}  // namespace
}  // namespace moe
