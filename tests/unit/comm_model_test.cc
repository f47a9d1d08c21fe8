// The alpha-beta model of the MoE exchange (launcher/comm_model.h), the bandwidth conventions,
// the sweep's CSV (launcher/comm_sweep_csv.h) and flag lists (launcher/comm_sweep_points.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "launcher/comm_model.h"
#include "launcher/comm_sweep_csv.h"
#include "launcher/comm_sweep_points.h"

namespace moe {
namespace {

// Exact data: the fit solves 2x2 or 4x4 normal equations in microseconds and megabytes, whose
// condition number here is below 1e6; double's 1.1e-16 rounding times that squared-free bound,
// with room for the unit conversions, stays under 1e-8 relative.
constexpr double kExactRel = 1e-8;

SweepRow Row(int64_t bytes, int ep, int rpn, double seconds) {
  SweepRow r;
  r.bytes = bytes;
  r.ep = ep;
  r.ranks_per_node = rpn;
  r.nodes = rpn > 0 ? (4 + rpn - 1) / rpn : 1;
  r.exchange_us = 1e6 * seconds;
  return r;
}

TEST(CommModelTest, BandwidthConventionsMatchHandComputedCases) {
  EXPECT_DOUBLE_EQ(AlgBandwidthGBs(1000000000, 1.0), 1.0);
  // 8 MiB in 2 ms: 8388608 / 0.002 / 1e9.
  EXPECT_DOUBLE_EQ(AlgBandwidthGBs(8388608, 0.002), 4.194304);
  EXPECT_DOUBLE_EQ(BusBandwidthGBs(4.0, 4), 3.0);  // * 3/4
  EXPECT_DOUBLE_EQ(BusBandwidthGBs(4.0, 2), 2.0);  // * 1/2
  EXPECT_DOUBLE_EQ(BusBandwidthGBs(4.0, 1), 0.0);  // one rank sends nothing to anybody
}

TEST(CommModelTest, PeersAndBytesSplitByNode) {
  EXPECT_EQ(SplitPeers(4, 2).intra, 1);
  EXPECT_EQ(SplitPeers(4, 2).inter, 2);
  EXPECT_EQ(SplitPeers(2, 4).intra, 1);
  EXPECT_EQ(SplitPeers(2, 4).inter, 0);
  EXPECT_EQ(SplitPeers(8, 0).intra, 7);  // 0: one node
  const LevelBytes b = SplitBytes(4000, 4, 2);  // 1000 per peer, own block stays home
  EXPECT_DOUBLE_EQ(b.intra, 1000);
  EXPECT_DOUBLE_EQ(b.inter, 2000);
}

TEST(CommModelTest, OneLevelFitRecoversAlphaAndBetaFromExactTimings) {
  const double alpha = 20e-6, beta = 1.0 / 2e9;  // 20 us, 2 GB/s
  std::vector<SweepRow> rows;
  for (int64_t bytes : {4096, 65536, 1 << 20, 8 << 20, 32 << 20})
    rows.push_back(Row(bytes, 4, 4, alpha + beta * bytes * 3 / 4));
  LinkModel m;
  std::string err;
  ASSERT_TRUE(FitLinkModel(rows, FitTarget::kExchange, &m, &err)) << err;
  EXPECT_FALSE(m.has_inter);
  EXPECT_NEAR(m.alpha_intra, alpha, kExactRel * alpha);
  EXPECT_NEAR(m.beta_intra, beta, kExactRel * beta);
}

// With |relative noise| <= eps on every timing, the fitted (alpha, beta) is the exact pair plus
// P delta, P = (A^T W^2 A)^-1 A^T W^2 (the weights the fit uses: 1 / measured time), |delta_i| <=
// eps * t_i; so |error_j| <= sum_i |P_ji| eps t_i, computed here by hand for the 2x2 case.
TEST(CommModelTest, OneLevelFitStaysWithinTheNoiseBound) {
  const double alpha = 15e-6, beta = 1.0 / 5e9, eps = 0.05;
  const std::vector<double> noise = {0.05, -0.03, 0.01, -0.05, 0.04, -0.02, 0.0};
  std::vector<SweepRow> rows;
  std::vector<double> x, t_true, t_meas;
  for (size_t i = 0; i < noise.size(); ++i) {
    const int64_t bytes = int64_t{4096} << (2 * i);
    const double xi = bytes / 2.0;  // ep 2: half the bytes go to the one peer
    x.push_back(xi);
    t_true.push_back(alpha + beta * xi);
    t_meas.push_back(t_true.back() * (1 + noise[i]));
    rows.push_back(Row(bytes, 2, 2, t_meas.back()));
  }
  double s00 = 0, s01 = 0, s11 = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double w2 = 1 / (t_meas[i] * t_meas[i]);
    s00 += w2;
    s01 += w2 * x[i];
    s11 += w2 * x[i] * x[i];
  }
  const double det = s00 * s11 - s01 * s01;
  double bound_alpha = 0, bound_beta = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double w2 = 1 / (t_meas[i] * t_meas[i]);
    bound_alpha += std::fabs((s11 - s01 * x[i]) * w2 / det) * eps * t_true[i];
    bound_beta += std::fabs((-s01 + s00 * x[i]) * w2 / det) * eps * t_true[i];
  }
  LinkModel m;
  std::string err;
  ASSERT_TRUE(FitLinkModel(rows, FitTarget::kExchange, &m, &err)) << err;
  EXPECT_NEAR(m.alpha_intra, alpha, bound_alpha * (1 + kExactRel));
  EXPECT_NEAR(m.beta_intra, beta, bound_beta * (1 + kExactRel));
  EXPECT_LT(bound_beta, 0.2 * beta);  // the bound says something
}

TEST(CommModelTest, TwoLevelFitRecoversBothLevels) {
  LinkModel truth;
  truth.alpha_intra = 8e-6;
  truth.beta_intra = 1.0 / 10e9;
  truth.alpha_inter = 40e-6;
  truth.beta_inter = 1.0 / 1e9;
  std::vector<SweepRow> rows;
  for (int64_t bytes : {16384, 262144, 4 << 20, 16 << 20}) {
    rows.push_back(Row(bytes, 4, 4, ExchangeSeconds(truth, bytes, 4, 4)));  // one node
    rows.push_back(Row(bytes, 2, 4, ExchangeSeconds(truth, bytes, 2, 4)));
    rows.push_back(Row(bytes, 4, 2, ExchangeSeconds(truth, bytes, 4, 2)));  // two nodes
  }
  LinkModel m;
  std::string err;
  ASSERT_TRUE(FitLinkModel(rows, FitTarget::kExchange, &m, &err)) << err;
  ASSERT_TRUE(m.has_inter);
  EXPECT_NEAR(m.alpha_intra, truth.alpha_intra, kExactRel * truth.alpha_intra);
  EXPECT_NEAR(m.beta_intra, truth.beta_intra, kExactRel * truth.beta_intra);
  EXPECT_NEAR(m.alpha_inter, truth.alpha_inter, kExactRel * truth.alpha_inter);
  EXPECT_NEAR(m.beta_inter, truth.beta_inter, kExactRel * truth.beta_inter);
}

// The transfer fit reads transfer_us and nothing else: exact transfer times under a skew that has
// nothing to do with the bytes (as a late rank's wait) give back the link's alpha and beta, which
// the exchange fit of the same rows cannot.
TEST(CommModelTest, TransferFitSeesTheLinkThroughTheSkew) {
  const double alpha = 30e-6, beta = 1.0 / 3e9;
  const double skew[] = {400e-6, 10e-6, 2500e-6, 90e-6, 1200e-6};
  std::vector<SweepRow> rows;
  for (int i = 0; i < 5; ++i) {
    const int64_t bytes = int64_t{8192} << (2 * i);
    const double transfer = alpha + beta * bytes / 2;  // ep 2: half the bytes cross
    rows.push_back(Row(bytes, 2, 2, skew[i] + transfer));
    rows.back().skew_us = 1e6 * skew[i];
    rows.back().transfer_us = 1e6 * transfer;
  }
  EXPECT_EQ(DefaultFitTarget(rows), FitTarget::kTransfer);
  LinkModel m;
  std::string err;
  ASSERT_TRUE(FitLinkModel(rows, FitTarget::kTransfer, &m, &err)) << err;
  EXPECT_NEAR(m.alpha_intra, alpha, kExactRel * alpha);
  EXPECT_NEAR(m.beta_intra, beta, kExactRel * beta);
  ASSERT_TRUE(FitLinkModel(rows, FitTarget::kExchange, &m, &err)) << err;
  double worst = 0;  // the exchange fit's miss of the transfer times
  for (const SweepRow& r : rows)
    worst = std::max(worst, std::fabs(1e6 * ExchangeSeconds(m, r.bytes, 2, 2) - r.transfer_us) /
                                r.transfer_us);
  EXPECT_GT(worst, 1.0);
}

// Rows from a CSV without the split (an older moe_comm_bench): the default fit is the exchange
// time, and asking for the transfer fit names the row and the missing column.
TEST(CommModelTest, TransferFitNeedsMeasuredTransferTimes) {
  std::vector<SweepRow> rows = {Row(4096, 2, 2, 1e-4), Row(1 << 20, 2, 2, 1e-3)};
  rows[0].transfer_us = 80;
  EXPECT_EQ(DefaultFitTarget(rows), FitTarget::kExchange);
  LinkModel m;
  std::string err;
  EXPECT_FALSE(FitLinkModel(rows, FitTarget::kTransfer, &m, &err));
  EXPECT_EQ(err, "row 2 (tokens 0, ep 2): transfer_us=-1: must be positive (not measured in "
                 "this CSV)");
  EXPECT_TRUE(FitLinkModel(rows, FitTarget::kExchange, &m, &err)) << err;
}

// Timings that a negative latency would fit best (t = beta x - 40 us) are fitted with alpha held
// at 0: then beta is the weighted least-squares line through the origin, sum w^2 x t / sum w^2 x^2
// with w = 1 / t, computed here by hand. Unconstrained, alpha would come out at -40 us.
TEST(CommModelTest, FitKeepsAlphaAndBetaNonNegative) {
  const double beta = 1.0 / 1e9;
  std::vector<SweepRow> rows;
  double sxt = 0, sxx = 0;
  for (int64_t bytes : {int64_t{1} << 17, int64_t{1} << 19, int64_t{1} << 21, int64_t{1} << 23}) {
    const double x = bytes / 2.0, t = beta * x - 40e-6;  // ep 2: half the bytes cross
    rows.push_back(Row(bytes, 2, 2, t));
    sxt += x * t / (t * t);
    sxx += x * x / (t * t);
  }
  LinkModel m;
  std::string err;
  ASSERT_TRUE(FitLinkModel(rows, FitTarget::kExchange, &m, &err)) << err;
  EXPECT_EQ(m.alpha_intra, 0.0);
  EXPECT_NEAR(m.beta_intra, sxt / sxx, kExactRel * sxt / sxx);

  // The solver alone: the unconstrained answer is kept where it is already non-negative.
  std::vector<double> x;
  ASSERT_TRUE(NonNegativeLeastSquares({{1, 1}, {1, 2}, {1, 3}}, {3, 5, 7}, {1, 1, 1},
                                      {"a", "b"}, &x, &err)) << err;
  EXPECT_NEAR(x[0], 1, 1e-12);
  EXPECT_NEAR(x[1], 2, 1e-12);
}

TEST(CommModelTest, FitRefusesRowsThatDoNotDetermineTheModel) {
  std::vector<SweepRow> rows = {Row(4096, 4, 4, 1e-4), Row(4096, 4, 4, 1.1e-4)};
  LinkModel m;
  std::string err;
  EXPECT_FALSE(FitLinkModel(rows, FitTarget::kExchange, &m, &err));
  EXPECT_NE(err.find("beta_intra"), std::string::npos) << err;
}

TEST(CommModelTest, ExchangeBytesAndFlopsOfVmoeTiny) {
  LayerShape s;
  s.tokens = 512;        // 32 images x 16 tokens
  s.group_tokens = 128;  // 8 images
  s.dim = 64;
  s.hidden = 128;
  s.experts = 8;
  s.top_k = 2;
  s.capacity = 1.05;
  // C = ceil(2 * 128 * 1.05 / 8) = ceil(33.6) = 34; rows = 8 experts x 4 groups x 34 = 1088.
  EXPECT_EQ(ExchangeBytes(s, 4), 1088 * 64 * 4);
  EXPECT_DOUBLE_EQ(ExpertFlops(s), 12.0 * 1088 * 64 * 128);
}

std::string TempPath(const char* name) {
  return std::string(::testing::TempDir()) + "/comm_model_test_" + name;
}

TEST(CommSweepCsvTest, RowsRoundTrip) {
  SweepRow a = Row(1048576, 4, 2, 1.25e-3);
  a.dispatcher = "flat";
  a.tokens = 1024;
  a.dim = 256;
  a.hidden = 512;
  a.experts = 8;
  a.top_k = 2;
  a.capacity = 1.25;
  a.algbw_gbs = 0.8388608;
  a.busbw_gbs = 0.6291456;
  a.a2a_ms = 5.0;
  a.layer_ms = 12.5;
  a.share = 0.4;
  a.skew_us = 312.5;
  a.transfer_us = 937.5;
  SweepRow b = a;
  b.dispatcher = "hierarchical";
  b.bytes = 7;
  const std::string path = TempPath("roundtrip.csv");
  std::string err;
  ASSERT_TRUE(WriteSweepCsv(path, {a, b}, &err)) << err;
  std::vector<SweepRow> back;
  ASSERT_TRUE(ReadSweepCsv(path, &back, &err)) << err;
  ASSERT_EQ(back.size(), 2u);
  // Reals are written with 9 significant digits: equal to 5e-9 relative.
  EXPECT_EQ(SweepCsvLine(back[0]), SweepCsvLine(a));
  EXPECT_EQ(back[1].dispatcher, "hierarchical");
  EXPECT_EQ(back[1].bytes, 7);
  EXPECT_NEAR(back[0].algbw_gbs, a.algbw_gbs, 5e-9 * a.algbw_gbs);
  EXPECT_EQ(back[0].ranks_per_node, 2);
  EXPECT_EQ(back[0].skew_us, 312.5);
  EXPECT_EQ(back[0].transfer_us, 937.5);
  std::remove(path.c_str());
}

std::string ParseError(const std::string& text) {
  std::vector<SweepRow> rows;
  std::string err;
  EXPECT_FALSE(ParseSweepCsv("sweep.csv", text, &rows, &err));
  return err;
}

TEST(CommSweepCsvTest, MalformedRowsNameFileLineAndField) {
  const std::string good = SweepCsvLine(Row(4096, 2, 2, 1e-4));
  std::string bad = good;
  const std::string bytes = ",4096,";
  bad.replace(bad.find(bytes), bytes.size(), ",40x6,");
  EXPECT_EQ(ParseError(SweepCsvHeader() + good + bad),
            "sweep.csv:3: field 'bytes': bad value '40x6'");
  EXPECT_EQ(ParseError(SweepCsvHeader() + "flat,1,2\n"),
            "sweep.csv:2: 3 fields, the header has " +
                std::to_string(SweepCsvColumnNames().size()));
  EXPECT_EQ(ParseError("dispatcher,tokens\n"), "sweep.csv:1: header lacks column 'dim'");
  std::string nan_time = good;
  nan_time.replace(nan_time.find(",100,"), 5, ",nan,");
  EXPECT_NE(ParseError(SweepCsvHeader() + nan_time).find("field 'exchange_us': bad value 'nan'"),
            std::string::npos);
}

// A CSV written before the skew and transfer columns existed still reads, marking them -1
// (not measured); any other missing column is still an error.
TEST(CommSweepCsvTest, SplitColumnsAreOptional) {
  SweepRow a = Row(4096, 2, 2, 1e-4);
  a.skew_us = 20;
  a.transfer_us = 80;
  std::string header = SweepCsvHeader(), line = SweepCsvLine(a);
  for (const char* name : {",skew_us", ",transfer_us"})
    header.erase(header.find(name), strlen(name));
  for (const char* value : {",20,", ",80,"}) line.replace(line.find(value), strlen(value), ",");
  std::vector<SweepRow> rows;
  std::string err;
  ASSERT_TRUE(ParseSweepCsv("old.csv", header + line, &rows, &err)) << err;
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].exchange_us, 100);
  EXPECT_EQ(rows[0].skew_us, -1);
  EXPECT_EQ(rows[0].transfer_us, -1);
  header.erase(header.find(",share"), 6);
  EXPECT_EQ(ParseError(header + line), "sweep.csv:1: header lacks column 'share'");
}

TEST(CommSweepPointsTest, FlagListsRejectBadValuesByName) {
  std::vector<int64_t> ints;
  std::vector<double> reals;
  std::vector<DispatcherKind> kinds;
  std::string err;
  EXPECT_TRUE(ParseIntList("tokens", "256,1024", &ints, &err));
  EXPECT_EQ(ints, (std::vector<int64_t>{256, 1024}));
  EXPECT_FALSE(ParseIntList("tokens", "256,x", &ints, &err));
  EXPECT_EQ(err, "--tokens=256,x: bad value 'x' (want positive integers, comma-separated)");
  EXPECT_FALSE(ParseRealList("capacity", "1.25,0", &reals, &err));
  EXPECT_EQ(err, "--capacity=1.25,0: bad value '0' (want positive numbers, comma-separated)");
  EXPECT_TRUE(ParseDispatcherList("dispatchers", "flat,pipelined", &kinds, &err));
  EXPECT_EQ(kinds.size(), 2u);
  EXPECT_FALSE(ParseDispatcherList("dispatchers", "flat,ring", &kinds, &err));
  EXPECT_EQ(err, "--dispatchers=flat,ring: bad value 'ring' (want flat, hierarchical or "
                 "pipelined)");
}

TEST(CommSweepPointsTest, SweepSkipsPointsTheWorldCannotRun) {
  SweepLists l;
  l.dispatchers = {DispatcherKind::kFlat};
  l.tokens = {256, 300};
  l.dims = {64};
  l.experts = {6};
  l.top_k = {2};
  l.capacity = {1.0};
  l.ep = {2, 3, 4};
  std::vector<std::string> skipped;
  const std::vector<SweepPoint> pts = ExpandSweep(l, 4, &skipped);
  // ep 2: tokens 256 runs, 300 is not a multiple of its group of 256 tokens; ep 3 does not
  // divide the 4 ranks; ep 4 does not divide the 6 experts.
  ASSERT_EQ(pts.size(), 1u);
  EXPECT_EQ(pts[0].ep, 2);
  EXPECT_EQ(pts[0].tokens, 256);
  EXPECT_EQ(pts[0].hidden, 128);
  EXPECT_EQ(skipped.size(), 5u);
}

}  // namespace
}  // namespace moe
