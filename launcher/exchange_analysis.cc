#include "launcher/exchange_analysis.h"

#include <glog/logging.h>

#include <algorithm>

namespace moe {

double AllToAllAlgBandwidth(double bytes, double seconds) {
  return seconds > 0 ? bytes / seconds : 0;
}

double AllToAllBusBandwidth(double algbw, int n) {
  return n >= 1 ? algbw * (n - 1) / n : 0;
}

ExchangeSplit SplitSkewTransfer(const std::vector<std::vector<Profiler::ExchangeTimes>>& times) {
  const size_t n = times.size();
  ExchangeSplit out;
  out.mean_skew_us.assign(n, 0);
  out.mean_transfer_us.assign(n, 0);
  out.arrived_last.assign(n, 0);
  if (n == 0) return out;
  const size_t calls = times[0].size();
  for (size_t r = 1; r < n; ++r)
    CHECK_EQ(times[r].size(), calls) << "SplitSkewTransfer: group rank " << r << " has "
                                     << times[r].size() << " calls, rank 0 has " << calls;
  for (size_t i = 0; i < calls; ++i) {
    size_t last = 0;
    for (size_t r = 1; r < n; ++r)
      if (times[r][i].arrive_us > times[last][i].arrive_us) last = r;
    const double last_arrival = times[last][i].arrive_us;
    ++out.arrived_last[last];
    for (size_t r = 0; r < n; ++r) {
      out.mean_skew_us[r] += last_arrival - times[r][i].arrive_us;
      out.mean_transfer_us[r] += std::max(0.0, times[r][i].depart_us - last_arrival);
    }
  }
  out.calls = static_cast<int64_t>(calls);
  for (size_t r = 0; r < n && calls > 0; ++r) {
    out.mean_skew_us[r] /= static_cast<double>(calls);
    out.mean_transfer_us[r] /= static_cast<double>(calls);
  }
  return out;
}

}  // namespace moe
