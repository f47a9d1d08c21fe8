// Profiler: nesting and inclusive times, byte sums, the bounded Chrome trace, the phase table.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include "core/profiler.h"

namespace moe {
namespace {

void SleepMs(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

size_t Count(const std::string& s, const std::string& part) {
  size_t n = 0;
  for (size_t at = s.find(part); at != std::string::npos; at = s.find(part, at + 1)) ++n;
  return n;
}

TEST(Profiler, NestedPhasesAreInclusiveAndBytesSum) {
  Profiler prof;
  for (int step = 0; step < 3; ++step) {
    ScopedPhase outer(&prof, "moe.forward");
    {
      ScopedPhase a2a(&prof, "a2a_out", 1000);
      SleepMs(2);
    }
    prof.Begin("experts");
    SleepMs(1);
    prof.End("experts", 24);
  }
  const auto& st = prof.Stats();
  ASSERT_EQ(st.size(), 3u);
  EXPECT_EQ(st.at("moe.forward").calls, 3);
  EXPECT_EQ(st.at("a2a_out").calls, 3);
  EXPECT_EQ(st.at("a2a_out").bytes, 3000);
  EXPECT_EQ(st.at("experts").bytes, 72);
  EXPECT_EQ(st.at("moe.forward").bytes, 0);
  EXPECT_GE(st.at("a2a_out").total_seconds, 0.006);
  EXPECT_GE(st.at("experts").total_seconds, 0.003);
  // The outer phase includes its nested phases.
  EXPECT_GE(st.at("moe.forward").total_seconds,
            st.at("a2a_out").total_seconds + st.at("experts").total_seconds);
  EXPECT_EQ(prof.open_phases(), 0);
  EXPECT_EQ(prof.Events().size(), 9u);

  prof.Reset();
  EXPECT_TRUE(prof.Stats().empty());
  EXPECT_TRUE(prof.Events().empty());
}

TEST(Profiler, ScopedPhaseToleratesNullAndLateBytes) {
  { ScopedPhase p(nullptr, "nothing", 5); }
  Profiler prof;
  {
    ScopedPhase p(&prof, "pack");
    p.set_bytes(4096);
  }
  EXPECT_EQ(prof.Stats().at("pack").bytes, 4096);
}

TEST(ProfilerDeathTest, MismatchedEndIsFatal) {
  Profiler prof;
  prof.Begin("outer");
  prof.Begin("inner");
  EXPECT_DEATH(prof.End("outer"), "must nest");
}

TEST(Profiler, ChromeTraceIsBoundedAndWellFormed) {
  Profiler prof(/*max_events=*/5);
  for (int i = 0; i < 8; ++i) {
    ScopedPhase p(&prof, i % 2 ? "router" : "combine \"x\"", 100 + i);
  }
  EXPECT_EQ(prof.Events().size(), 5u);
  EXPECT_EQ(prof.dropped_events(), 3);
  EXPECT_EQ(prof.Stats().at("router").calls, 4);  // stats are not bounded

  const std::string path = ::testing::TempDir() + "/profiler_trace_rank3.json";
  ASSERT_TRUE(prof.WriteChromeTrace(path, /*pid=*/3));
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string json = ss.str();
  EXPECT_EQ(json.front(), '{');
  EXPECT_EQ(json.substr(json.find_last_not_of("\n") - 1, 2), "]}");
  EXPECT_NE(json.find("\"traceEvents\":["), std::string::npos);
  EXPECT_EQ(Count(json, "\"ph\":\"X\""), 5u);
  EXPECT_EQ(Count(json, "\"pid\":3,"), 6u);  // 5 events + the process_name metadata
  EXPECT_EQ(Count(json, "\"tid\":0"), 6u);
  EXPECT_EQ(Count(json, "\"ts\":"), 5u);
  EXPECT_EQ(Count(json, "\"dur\":"), 5u);
  EXPECT_NE(json.find("\"args\":{\"bytes\":107}"), std::string::npos);   // the last event kept
  EXPECT_EQ(json.find("\"args\":{\"bytes\":100}"), std::string::npos);   // the first one dropped
  EXPECT_NE(json.find("combine \\\"x\\\""), std::string::npos);         // quotes escaped
  EXPECT_EQ(Count(json, "{"), Count(json, "}"));
  EXPECT_EQ(Count(json, "["), Count(json, "]"));
  // Events are ordered by start time.
  double last_ts = -1;
  for (const auto& e : prof.Events()) {
    EXPECT_GE(e.ts_us, last_ts);
    last_ts = e.ts_us;
  }
  std::remove(path.c_str());

  EXPECT_FALSE(prof.WriteChromeTrace("/nonexistent-dir/trace.json", 0));
}

TEST(Profiler, PhaseTableIsAligned) {
  const std::string table = FormatPhaseTable(
      {"router", "a2a_out", "experts.forward"}, {0.001, 0.0125, 0.002}, {0.0015, 0.02, 0.0025},
      {0.002, 0.03125, 0.003}, {0, 2.5e6, 123456});
  std::istringstream in(table);
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  ASSERT_EQ(lines.size(), 5u) << table;  // header, rule, 3 rows
  for (const auto& l : lines) EXPECT_EQ(l.size(), lines[0].size()) << table;
  EXPECT_EQ(lines[0].rfind("phase", 0), 0u);
  for (const char* h : {"min ms", "mean ms", "max ms", "MB/rank"})
    EXPECT_NE(lines[0].find(h), std::string::npos) << h;
  // Column separators line up on every line.
  const size_t bar = lines[0].find('|');
  for (const auto& l : lines) EXPECT_TRUE(l[bar] == '|' || l[bar] == '+') << l;
  EXPECT_NE(lines[3].find("a2a_out"), std::string::npos);
  EXPECT_NE(lines[3].find("12.500"), std::string::npos);
  EXPECT_NE(lines[3].find("20.000"), std::string::npos);
  EXPECT_NE(lines[3].find("31.250"), std::string::npos);
  EXPECT_NE(lines[3].find("2.500"), std::string::npos);
  EXPECT_NE(lines[4].find("0.123"), std::string::npos);
  EXPECT_EQ(FormatPhaseTable({}, {}, {}, {}, {}).find('\n', 0) != std::string::npos, true);
}

}  // namespace
}  // namespace moe
