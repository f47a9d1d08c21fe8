#include "core/profiler.h"

#include <glog/logging.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <sstream>

namespace moe {

Profiler::Profiler(size_t max_events, size_t max_exchanges_per_phase)
    : max_events_(max_events), max_exchanges_(max_exchanges_per_phase), origin_(Clock::now()) {}

double Profiler::NowMicros() {
  return std::chrono::duration<double, std::micro>(Clock::now().time_since_epoch()).count();
}

double Profiler::origin_common_us() const {
  return std::chrono::duration<double, std::micro>(origin_.time_since_epoch()).count() +
         clock_offset_us_;
}

void Profiler::RecordExchange(const std::string& phase, double arrive_us, double depart_us) {
  ExchangeLog& log = exchanges_[phase];
  ++log.calls;
  if (max_exchanges_ == 0) return;
  if (log.recent.size() >= max_exchanges_) log.recent.pop_front();
  log.recent.push_back(ExchangeTimes{arrive_us, depart_us});
}

void Profiler::AddDeviceSeconds(const std::string& phase, double seconds) {
  stats_[phase].device_seconds += seconds;
}

double Profiler::MicrosSinceOrigin(Clock::time_point t) const {
  return std::chrono::duration<double, std::micro>(t - origin_).count();
}

void Profiler::Begin(const std::string& phase) { open_.emplace_back(phase, Clock::now()); }

void Profiler::End(const std::string& phase, int64_t bytes) {
  const Clock::time_point now = Clock::now();
  CHECK(!open_.empty()) << "Profiler::End(\"" << phase << "\") without a matching Begin";
  CHECK_EQ(open_.back().first, phase)
      << "Profiler phases must nest: End(\"" << phase << "\") while \"" << open_.back().first
      << "\" is the innermost open phase";
  const Clock::time_point start = open_.back().second;
  open_.pop_back();

  const double seconds = std::chrono::duration<double>(now - start).count();
  PhaseStats& s = stats_[phase];
  s.total_seconds += seconds;
  s.calls += 1;
  s.bytes += bytes;

  if (max_events_ == 0) {
    ++dropped_events_;
    return;
  }
  if (events_.size() >= max_events_) {
    events_.pop_front();
    ++dropped_events_;
  }
  events_.push_back(TraceEvent{phase, MicrosSinceOrigin(start), seconds * 1e6, bytes});
}

void Profiler::Reset() {
  CHECK(open_.empty()) << "Profiler::Reset with " << open_.size() << " open phase(s), innermost \""
                       << open_.back().first << "\"";
  stats_.clear();
  events_.clear();
  exchanges_.clear();
  dropped_events_ = 0;
  origin_ = Clock::now();
}

namespace {
std::string JsonEscape(const std::string& s) {
  std::string out;
  out.reserve(s.size() + 2);
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out;
}
}  // namespace

std::string Profiler::ChromeTraceEventLines(int pid, double shift_us) const {
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(3);
  // Metadata so Perfetto labels the track by rank.
  os << "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":" << pid
     << ",\"tid\":0,\"args\":{\"name\":\"rank " << pid << "\"}}";
  for (const TraceEvent& e : events_) {
    os << ",\n{\"name\":\"" << JsonEscape(e.name) << "\",\"cat\":\"phase\",\"ph\":\"X\",\"ts\":"
       << e.ts_us + shift_us << ",\"dur\":" << e.dur_us << ",\"pid\":" << pid
       << ",\"tid\":0,\"args\":{\"bytes\":" << e.bytes << "}}";
  }
  return os.str();
}

std::string Profiler::ChromeTraceJson(int pid) const {
  std::ostringstream os;
  os << "{\"displayTimeUnit\":\"ms\",\"otherData\":{\"dropped_events\":" << dropped_events_
     << "},\"traceEvents\":[\n"
     << ChromeTraceEventLines(pid, 0) << "\n]}\n";
  return os.str();
}

bool WriteTextFileChecked(const std::string& path, const std::string& json, std::string* error) {
  // stdio rather than ofstream: each step's errno names the cause (ENOSPC, EDQUOT, EIO, ...).
  const char* step = nullptr;
  int err = 0;
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) {
    step = "open for writing";
    err = errno;
  } else {
    if (std::fwrite(json.data(), 1, json.size(), f) != json.size() || std::fflush(f) != 0) {
      step = "write";
      err = errno;
    }
    if (std::fclose(f) != 0 && step == nullptr) {
      step = "close";
      err = errno;
    }
  }
  if (step == nullptr) return true;
  const std::string message = path + ": " + step + " failed: " + std::strerror(err);
  if (error != nullptr) *error = message;
  else LOG(ERROR) << message;
  return false;
}

bool Profiler::WriteChromeTrace(const std::string& path, int pid, std::string* error) const {
  std::string message;
  if (WriteTextFileChecked(path, ChromeTraceJson(pid), &message)) return true;
  if (error != nullptr) *error = message;
  else LOG(ERROR) << "Chrome trace " << message;
  return false;
}

ScopedPhase::ScopedPhase(Profiler* profiler, const std::string& phase, int64_t bytes)
    : profiler_(profiler), phase_(profiler ? phase : std::string()), bytes_(bytes) {
  if (profiler_) profiler_->Begin(phase_);
}

ScopedPhase::~ScopedPhase() {
  if (profiler_) profiler_->End(phase_, bytes_);
}

ScopedExchange::ScopedExchange(Profiler* profiler, const std::string& phase, int64_t bytes)
    : phase_(profiler, phase, bytes),
      profiler_(profiler),
      name_(profiler ? phase : std::string()),
      arrive_us_(profiler ? Profiler::NowMicros() : 0) {}

ScopedExchange::~ScopedExchange() {
  if (profiler_) profiler_->RecordExchange(name_, arrive_us_, Profiler::NowMicros());
}

std::string FormatPhaseTable(const std::vector<std::string>& phases,
                             const std::vector<double>& min_s, const std::vector<double>& mean_s,
                             const std::vector<double>& max_s,
                             const std::vector<double>& bytes_per_rank) {
  const size_t n = phases.size();
  CHECK_EQ(min_s.size(), n);
  CHECK_EQ(mean_s.size(), n);
  CHECK_EQ(max_s.size(), n);
  CHECK_EQ(bytes_per_rank.size(), n);
  size_t name_w = 5;  // "phase"
  for (const auto& p : phases) name_w = std::max(name_w, p.size());
  const size_t num_w = 12;

  auto cell = [](double v) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%.3f", v);
    return std::string(buf);
  };
  auto pad_left = [](const std::string& s, size_t w) {
    return s.size() >= w ? s : std::string(w - s.size(), ' ') + s;
  };
  auto pad_right = [](const std::string& s, size_t w) {
    return s.size() >= w ? s : s + std::string(w - s.size(), ' ');
  };
  auto row = [&](const std::string& a, const std::string& b, const std::string& c,
                 const std::string& d, const std::string& e) {
    return pad_right(a, name_w) + " | " + pad_left(b, num_w) + " | " + pad_left(c, num_w) +
           " | " + pad_left(d, num_w) + " | " + pad_left(e, num_w) + "\n";
  };
  std::string out = row("phase", "min ms", "mean ms", "max ms", "MB/rank");
  out += std::string(name_w, '-') + "-+-" + std::string(num_w, '-') + "-+-" +
         std::string(num_w, '-') + "-+-" + std::string(num_w, '-') + "-+-" +
         std::string(num_w, '-') + "\n";
  for (size_t i = 0; i < n; ++i) {
    out += row(phases[i], cell(min_s[i] * 1e3), cell(mean_s[i] * 1e3), cell(max_s[i] * 1e3),
               cell(bytes_per_rank[i] / 1e6));
  }
  return out;
}

}  // namespace moe
