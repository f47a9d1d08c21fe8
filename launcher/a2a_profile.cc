#include "launcher/a2a_profile.h"

#include <glog/logging.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "launcher/exchange_analysis.h"

namespace moe {
namespace {

using Times = std::vector<Profiler::ExchangeTimes>;

// One rank's record for the gather: clock error, then per phase: total calls, kept calls, and
// the kept calls' (arrival, departure) on the common clock.
std::string PackRank(const Profiler& profiler) {
  std::vector<double> v{profiler.clock_error_us()};
  const double offset = profiler.clock_offset_us();
  for (const std::string& phase : AllToAllPhases()) {
    auto it = profiler.Exchanges().find(phase);
    const int64_t total = it == profiler.Exchanges().end() ? 0 : it->second.calls;
    v.push_back(static_cast<double>(total));
    v.push_back(total == 0 ? 0 : static_cast<double>(it->second.recent.size()));
    if (total == 0) continue;
    for (const auto& t : it->second.recent) {
      v.push_back(t.arrive_us + offset);
      v.push_back(t.depart_us + offset);
    }
  }
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(double));
}

struct RankRecord {
  double clock_error_us = 0;
  std::vector<int64_t> total_calls;  // per phase
  std::vector<Times> kept;           // per phase
};

RankRecord UnpackRank(const std::string& bytes) {
  std::vector<double> v(bytes.size() / sizeof(double));
  std::memcpy(v.data(), bytes.data(), v.size() * sizeof(double));
  RankRecord r;
  size_t at = 0;
  r.clock_error_us = v.at(at++);
  for (size_t p = 0; p < AllToAllPhases().size(); ++p) {
    r.total_calls.push_back(static_cast<int64_t>(v.at(at++)));
    const size_t kept = static_cast<size_t>(v.at(at++));
    Times times(kept);
    for (auto& t : times) {
      t.arrive_us = v.at(at++);
      t.depart_us = v.at(at++);
    }
    r.kept.push_back(std::move(times));
  }
  return r;
}

// Per world rank, over every phase: skew / transfer sums (us per call, weighted per phase) and
// how often it arrived last of how many calls.
struct Tally {
  std::vector<double> skew_us, transfer_us;  // per phase: mean over ranks of the per-call mean
  std::vector<int64_t> last, calls;          // per world rank
  std::vector<double> rank_skew_sum_us;      // per world rank, over its analysed calls
  int64_t calls_per_rank = 0;
};

// The i-th kept call of each rank of one group, aligned on the newest calls (every rank of a
// group makes the same calls, so equal totals mean the last k line up).
bool AlignGroup(const std::vector<RankRecord>& ranks, int first, int n, size_t p,
                std::vector<Times>* group) {
  size_t k = ranks[first].kept[p].size();
  for (int r = first; r < first + n; ++r) {
    if (ranks[r].total_calls[p] != ranks[first].total_calls[p]) {
      LOG(WARNING) << "a2a profile: " << AllToAllPhases()[p] << ": world rank " << r << " made "
                   << ranks[r].total_calls[p] << " calls, rank " << first << " "
                   << ranks[first].total_calls[p] << "; skew of this group left out";
      return false;
    }
    k = std::min(k, ranks[r].kept[p].size());
  }
  group->clear();
  for (int r = first; r < first + n; ++r)
    group->emplace_back(ranks[r].kept[p].end() - k, ranks[r].kept[p].end());
  return true;
}

Tally TallyGroups(const std::vector<RankRecord>& ranks, int ep) {
  const int world = static_cast<int>(ranks.size());
  Tally t;
  t.last.assign(world, 0);
  t.calls.assign(world, 0);
  t.rank_skew_sum_us.assign(world, 0);
  for (size_t p = 0; p < AllToAllPhases().size(); ++p) {
    double skew = 0, transfer = 0;
    int counted = 0;
    for (int first = 0; first + ep <= world; first += ep) {
      std::vector<Times> group;
      if (!AlignGroup(ranks, first, ep, p, &group)) continue;
      const ExchangeSplit split = SplitSkewTransfer(group);
      for (int r = 0; r < ep; ++r) {
        skew += split.mean_skew_us[r];
        transfer += split.mean_transfer_us[r];
        t.last[first + r] += split.arrived_last[r];
        t.calls[first + r] += split.calls;
        t.rank_skew_sum_us[first + r] += split.mean_skew_us[r] * split.calls;
      }
      counted += ep;
    }
    t.skew_us.push_back(counted ? skew / counted : 0);
    t.transfer_us.push_back(counted ? transfer / counted : 0);
  }
  t.calls_per_rank = world > 0 ? t.calls[0] : 0;
  return t;
}

// Per phase, the world mean of time, bytes, device time and calls per step.
std::vector<double> MeanPerStep(const Profiler& profiler, int64_t steps, MpiCommunicator* comm) {
  const auto& phases = AllToAllPhases();
  std::vector<double> v;  // 4 per phase: seconds, bytes, device seconds, calls
  for (const std::string& phase : phases) {
    auto it = profiler.Stats().find(phase);
    const bool ran = it != profiler.Stats().end();
    v.push_back(ran ? it->second.total_seconds : 0);
    v.push_back(ran ? static_cast<double>(it->second.bytes) : 0);
    v.push_back(ran ? it->second.device_seconds : 0);
    v.push_back(ran ? static_cast<double>(it->second.calls) : 0);
  }
  comm->AllReduceSum(v.data(), static_cast<int64_t>(v.size()), GroupKind::kWorld);
  const double scale = 1.0 / (std::max<int64_t>(1, steps) * comm->Size(GroupKind::kWorld));
  for (double& x : v) x *= scale;
  return v;
}

}  // namespace

const std::vector<std::string>& AllToAllPhases() {
  static const std::vector<std::string> phases = {"a2a_dispatch", "a2a_combine",
                                                  "a2a_combine_bwd", "a2a_dispatch_bwd"};
  return phases;
}

AllToAllProfile ProfileAllToAlls(const Profiler& profiler, int64_t steps, MpiCommunicator* comm) {
  const std::vector<double> mean = MeanPerStep(profiler, steps, comm);
  std::vector<std::string> packed;
  comm->GatherBytes(PackRank(profiler), 0, &packed);
  AllToAllProfile out;
  out.ep_size = comm->Size(GroupKind::kExpert);
  if (comm->Rank(GroupKind::kWorld) != 0) return out;
  std::vector<RankRecord> ranks;
  for (const std::string& b : packed) {
    ranks.push_back(UnpackRank(b));
    out.max_clock_error_us = std::max(out.max_clock_error_us, ranks.back().clock_error_us);
  }
  const Tally tally = TallyGroups(ranks, out.ep_size);
  for (size_t p = 0; p < AllToAllPhases().size(); ++p) {
    const double seconds = mean[4 * p], bytes = mean[4 * p + 1], calls = mean[4 * p + 3];
    if (calls == 0) continue;
    AllToAllRow row;
    row.phase = AllToAllPhases()[p];
    row.bytes_per_rank = bytes;
    row.ms = seconds * 1e3;
    row.skew_ms = tally.skew_us[p] * calls * 1e-3;
    row.transfer_ms = tally.transfer_us[p] * calls * 1e-3;
    row.device_ms = mean[4 * p + 2] * 1e3;
    row.algbw_gbs = AllToAllAlgBandwidth(bytes, seconds) * 1e-9;
    row.busbw_gbs = AllToAllBusBandwidth(row.algbw_gbs, out.ep_size);
    out.rows.push_back(row);
  }
  out.calls_per_rank = tally.calls_per_rank;
  for (size_t r = 0; r < tally.calls.size(); ++r)
    out.rank_skew_us.push_back(tally.calls[r] ? tally.rank_skew_sum_us[r] / tally.calls[r] : 0);
  // With one rank per EP group nobody waits for anybody: no straggler to name.
  for (size_t r = 0; r < tally.last.size() && out.ep_size > 1; ++r) {
    const double f = tally.calls[r] ? static_cast<double>(tally.last[r]) / tally.calls[r] : 0;
    if (f > out.straggler_fraction) {
      out.straggler_fraction = f;
      out.straggler_rank = static_cast<int>(r);
    }
  }
  if (!out.rows.empty()) out.text = FormatAllToAllTable(out);
  return out;
}

}  // namespace moe
