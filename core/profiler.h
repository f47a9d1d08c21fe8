// Profiler: wall-clock time and bytes per named phase (router, dispatch pack, a2a out, ...).
//
// Begin/End pairs must nest properly (End closes the innermost open phase, which must have the
// same name). A phase's time is inclusive: an outer phase's total includes its nested phases.
// Every closed phase also becomes a Chrome-trace event; only the most recent `max_events` are
// kept so a long run's memory stays bounded. Stats keep accumulating over all calls until Reset().
// Host clock only (std::chrono::steady_clock): on GPU the caller must synchronise before End for
// the time to mean anything. Not thread-safe: one Profiler per rank, used from one thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace moe {

class Profiler {
 public:
  struct PhaseStats {
    double total_seconds = 0;
    int64_t calls = 0;
    int64_t bytes = 0;
  };
  struct TraceEvent {
    std::string name;
    double ts_us = 0;   // start, microseconds since construction / last Reset()
    double dur_us = 0;
    int64_t bytes = 0;
  };

  explicit Profiler(size_t max_events = 20000);

  void Begin(const std::string& phase);
  // Closes the innermost open phase (CHECK-fails if its name differs) and adds `bytes` to it.
  void End(const std::string& phase, int64_t bytes = 0);

  const std::map<std::string, PhaseStats>& Stats() const { return stats_; }
  const std::deque<TraceEvent>& Events() const { return events_; }
  int64_t dropped_events() const { return dropped_events_; }
  int open_phases() const { return static_cast<int>(open_.size()); }
  // Clears stats, events and the time origin (open phases must all be closed).
  void Reset();

  // Chrome trace JSON ({"traceEvents": [...]}), opens in Perfetto / chrome://tracing.
  // pid = rank, tid = 0, complete events (ph "X") with ts/dur in microseconds and args.bytes.
  // Every step (open, write, flush, close) is checked: on failure returns false with
  // "PATH: <step> failed: <strerror>" in *error (logged instead when error is null).
  bool WriteChromeTrace(const std::string& path, int pid, std::string* error = nullptr) const;
  std::string ChromeTraceJson(int pid) const;

 private:
  using Clock = std::chrono::steady_clock;
  double MicrosSinceOrigin(Clock::time_point t) const;

  size_t max_events_;
  Clock::time_point origin_;
  std::vector<std::pair<std::string, Clock::time_point>> open_;
  std::map<std::string, PhaseStats> stats_;
  std::deque<TraceEvent> events_;
  int64_t dropped_events_ = 0;
};

// RAII Begin/End; a null profiler makes it a no-op so callers need not check.
class ScopedPhase {
 public:
  ScopedPhase(Profiler* profiler, const std::string& phase, int64_t bytes = 0);
  ~ScopedPhase();
  ScopedPhase(const ScopedPhase&) = delete;
  ScopedPhase& operator=(const ScopedPhase&) = delete;
  // For phases whose byte count is known only at the end.
  void set_bytes(int64_t bytes) { bytes_ = bytes; }

 private:
  Profiler* profiler_;
  std::string phase_;
  int64_t bytes_;
};

// Aligned text table, one row per phase:
//   phase | min ms | mean ms | max ms | MB/rank
// Times are given in seconds and printed in milliseconds (3 decimals); bytes are per rank and
// printed in MB = 1e6 bytes (3 decimals). All vectors must have the same length. The caller does
// the cross-rank reduction and decides whether values are per step or totals.
std::string FormatPhaseTable(const std::vector<std::string>& phases,
                             const std::vector<double>& min_s, const std::vector<double>& mean_s,
                             const std::vector<double>& max_s,
                             const std::vector<double>& bytes_per_rank);

}  // namespace moe
