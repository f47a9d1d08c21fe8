// The all-to-all profile's arithmetic: nccl-tests bandwidths on hand-computed cases, the
// skew / transfer split of a few calls worked out by hand, ScopedExchange's bounded log, and the
// table and summary JSON that carry the figures.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "core/profiler.h"
#include "launcher/a2a_profile.h"
#include "launcher/exchange_analysis.h"
#include "launcher/run_summary.h"

namespace moe {
namespace {

TEST(AllToAllBandwidth, NcclTestsConvention) {
  // 8 MB sent by one rank in 2 ms: 4 GB/s; on 4 ranks 3/4 of it crosses links: 3 GB/s.
  const double alg = AllToAllAlgBandwidth(8e6, 2e-3);
  EXPECT_DOUBLE_EQ(alg, 4e9);
  EXPECT_DOUBLE_EQ(AllToAllBusBandwidth(alg, 4), 3e9);
  // On 2 ranks half of it crosses; on 1 rank nothing does.
  EXPECT_DOUBLE_EQ(AllToAllBusBandwidth(alg, 2), 2e9);
  EXPECT_DOUBLE_EQ(AllToAllBusBandwidth(alg, 1), 0);
  // 557,056 bytes in 8.201 ms (vmoe_tiny's per-step dispatch): 67.93 MB/s, busbw 50.94 MB/s.
  EXPECT_NEAR(AllToAllAlgBandwidth(557056, 8.201e-3), 67925374.9, 0.1);
  EXPECT_NEAR(AllToAllBusBandwidth(67925374.9, 4), 50944031.2, 0.1);
  EXPECT_EQ(AllToAllAlgBandwidth(100, 0), 0);
}

TEST(SplitSkewTransfer, HandComputedCalls) {
  // Two calls on three ranks (us). Call 0: last arrival 30 (rank 2); call 1: 50 (rank 0).
  std::vector<std::vector<Profiler::ExchangeTimes>> t = {
      {{10, 40}, {50, 60}},  // rank 0
      {{20, 45}, {44, 62}},  // rank 1
      {{30, 41}, {40, 49}},  // rank 2: departs call 1 before the last arrival: transfer 0
  };
  const ExchangeSplit s = SplitSkewTransfer(t);
  EXPECT_EQ(s.calls, 2);
  // skew: rank 0 (20 + 0) / 2, rank 1 (10 + 6) / 2, rank 2 (0 + 10) / 2.
  EXPECT_DOUBLE_EQ(s.mean_skew_us[0], 10);
  EXPECT_DOUBLE_EQ(s.mean_skew_us[1], 8);
  EXPECT_DOUBLE_EQ(s.mean_skew_us[2], 5);
  // transfer: rank 0 (10 + 10) / 2, rank 1 (15 + 12) / 2, rank 2 (11 + 0) / 2.
  EXPECT_DOUBLE_EQ(s.mean_transfer_us[0], 10);
  EXPECT_DOUBLE_EQ(s.mean_transfer_us[1], 13.5);
  EXPECT_DOUBLE_EQ(s.mean_transfer_us[2], 5.5);
  EXPECT_EQ(s.arrived_last, (std::vector<int64_t>{1, 0, 1}));
}

TEST(SplitSkewTransfer, UnequalCallCountsAreAnError) {
  std::vector<std::vector<Profiler::ExchangeTimes>> t = {{{1, 2}}, {}};
  EXPECT_DEATH(SplitSkewTransfer(t), "group rank 1 has 0 calls, rank 0 has 1");
}

TEST(ScopedExchange, RecordsArrivalAndDepartureBounded) {
  Profiler prof(/*max_events=*/100, /*max_exchanges_per_phase=*/3);
  for (int i = 0; i < 5; ++i) {
    const double before = Profiler::NowMicros();
    {
      ScopedExchange ex(&prof, "a2a_dispatch", 64);
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    const auto& log = prof.Exchanges().at("a2a_dispatch");
    EXPECT_GE(log.recent.back().arrive_us, before);
    EXPECT_GE(log.recent.back().depart_us - log.recent.back().arrive_us, 1000);
  }
  const auto& log = prof.Exchanges().at("a2a_dispatch");
  EXPECT_EQ(log.calls, 5);
  EXPECT_EQ(log.recent.size(), 3u);
  EXPECT_EQ(prof.Stats().at("a2a_dispatch").calls, 5);
  EXPECT_EQ(prof.Stats().at("a2a_dispatch").bytes, 320);
  ScopedExchange nothing(nullptr, "a2a_dispatch");  // a null profiler is a no-op
}

AllToAllProfile TwoRowProfile() {
  AllToAllProfile p;
  p.ep_size = 4;
  p.straggler_rank = 2;
  p.straggler_fraction = 0.83;
  p.calls_per_rank = 120;
  AllToAllRow r;
  r.phase = "a2a_dispatch";
  r.bytes_per_rank = 557056;
  r.ms = 8.201;
  r.skew_ms = 6.5;
  r.transfer_ms = 1.7;
  r.algbw_gbs = 0.0679;
  r.busbw_gbs = 0.0509;
  p.rows = {r, r};
  p.rows[1].phase = "a2a_combine";
  return p;
}

TEST(AllToAllTable, RowsNotesAndStraggler) {
  const std::string t = FormatAllToAllTable(TwoRowProfile());
  EXPECT_NE(t.find("busbw GB/s"), std::string::npos) << t;
  EXPECT_NE(t.find("a2a_dispatch     |      0.557 |      8.201 |      6.500 |      1.700"),
            std::string::npos) << t;
  EXPECT_NE(t.find("n = 4"), std::string::npos) << t;
  EXPECT_NE(t.find("rank 2 arrived last in 83% of all-to-alls"), std::string::npos) << t;
  EXPECT_NE(t.find("16 bytes per all-to-all"), std::string::npos) << t;
}

TEST(AllToAllSummary, JsonKeepsOldFieldsAndAddsPhases) {
  RunSummary s;
  s.family = "vit";
  s.steps = 10;
  const std::string plain = SummaryJson(s);
  EXPECT_EQ(plain.find("a2a"), std::string::npos);  // dense: nothing new
  const AllToAllProfile p = TwoRowProfile();
  s.all_to_alls = p.rows;
  s.ep_size = 4;
  s.straggler_rank = 2;
  s.straggler_fraction = 0.83;
  const std::string j = SummaryJson(s);
  EXPECT_NE(j.find("\"steps\": 10"), std::string::npos) << j;
  EXPECT_NE(j.find("\"a2a\": {\"a2a_dispatch\": {\"bytes_per_rank\": 557056, \"ms\": 8.201, "
                   "\"skew_ms\": 6.5, \"transfer_ms\": 1.7"), std::string::npos) << j;
  EXPECT_NE(j.find("\"a2a_straggler\": {\"rank\": 2, \"fraction\": 0.83}"), std::string::npos)
      << j;
  EXPECT_EQ(j.back(), '}');
}

}  // namespace
}  // namespace moe
