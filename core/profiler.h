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
    double device_seconds = 0;  // CUDA-event time of the device work (exchanges on GPU), else 0
  };
  // One all-to-all call: when this rank entered it and left it, in microseconds of the local
  // steady clock (common clock = local + clock_offset_us()). 16 bytes per call.
  struct ExchangeTimes {
    double arrive_us = 0;
    double depart_us = 0;
  };
  struct ExchangeLog {
    int64_t calls = 0;                  // every call since Reset, kept or not
    std::deque<ExchangeTimes> recent;   // the last max_exchanges_per_phase calls
  };
  struct TraceEvent {
    std::string name;
    double ts_us = 0;   // start, microseconds since construction / last Reset()
    double dur_us = 0;
    int64_t bytes = 0;
  };

  explicit Profiler(size_t max_events = 20000, size_t max_exchanges_per_phase = 4096);

  // The local steady clock in microseconds since its epoch (the clock every time here uses).
  static double NowMicros();

  void Begin(const std::string& phase);
  // Closes the innermost open phase (CHECK-fails if its name differs) and adds `bytes` to it.
  void End(const std::string& phase, int64_t bytes = 0);

  // Records one all-to-all call of `phase` (ScopedExchange calls it). Keeps the last
  // max_exchanges_per_phase calls per phase so memory stays bounded.
  void RecordExchange(const std::string& phase, double arrive_us, double depart_us);
  void AddDeviceSeconds(const std::string& phase, double seconds);
  const std::map<std::string, ExchangeLog>& Exchanges() const { return exchanges_; }

  // Offset of this rank's steady clock to the common clock (rank 0's), from comm/clock_sync.h.
  // error_us bounds the offset's error (half the kept ping-pong's round trip).
  void set_common_clock(double offset_us, double error_us) {
    clock_offset_us_ = offset_us;
    clock_error_us_ = error_us;
  }
  double clock_offset_us() const { return clock_offset_us_; }
  double clock_error_us() const { return clock_error_us_; }
  // The trace origin (construction / last Reset) on the common clock, in microseconds.
  double origin_common_us() const;

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
  // The trace events alone (process-name record first), one per line, each line starting with
  // ",\n" except the first; ts shifted by shift_us. For merging ranks on the common clock.
  std::string ChromeTraceEventLines(int pid, double shift_us) const;

 private:
  using Clock = std::chrono::steady_clock;
  double MicrosSinceOrigin(Clock::time_point t) const;

  size_t max_events_;
  size_t max_exchanges_;
  double clock_offset_us_ = 0;
  double clock_error_us_ = 0;
  Clock::time_point origin_;
  std::map<std::string, ExchangeLog> exchanges_;
  std::vector<std::pair<std::string, Clock::time_point>> open_;
  std::map<std::string, PhaseStats> stats_;
  std::deque<TraceEvent> events_;
  int64_t dropped_events_ = 0;
};

// Writes `text` to `path`, checking open, write, flush and close: on failure returns false with
// "PATH: <step> failed: <strerror>" in *error (logged instead when error is null).
bool WriteTextFileChecked(const std::string& path, const std::string& text, std::string* error);

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

// RAII marker of one all-to-all call: a ScopedPhase that also records this rank's arrival
// (construction) and departure (destruction) for the skew / transfer split. Costs two clock
// reads and 16 bytes per call. A null profiler makes it a no-op.
class ScopedExchange {
 public:
  ScopedExchange(Profiler* profiler, const std::string& phase, int64_t bytes = 0);
  ~ScopedExchange();
  ScopedExchange(const ScopedExchange&) = delete;
  ScopedExchange& operator=(const ScopedExchange&) = delete;

 private:
  ScopedPhase phase_;  // closed after the destructor body recorded the departure
  Profiler* profiler_;
  std::string name_;
  double arrive_us_ = 0;
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
