#include "launcher/profile_report.h"

namespace moe {

const std::vector<std::string>& ProfiledPhases() {
  static const std::vector<std::string> phases = {
      "forward_total", "router",          "dispatch_pack", "a2a_dispatch",
      "experts",       "a2a_combine",     "combine",       "backward_total",
      "combine_bwd",   "a2a_combine_bwd", "experts_bwd",   "a2a_dispatch_bwd",
      "dispatch_bwd",  "router_bwd",      "grad_allreduce", "optimizer"};
  return phases;
}

std::string FormatProfileAcrossRanks(const Profiler& profiler, int64_t steps, Communicator* comm) {
  const auto& phases = ProfiledPhases();
  const size_t n = phases.size();
  std::vector<double> mn(n), mean(n), mx(n), bytes(n);
  const auto& stats = profiler.Stats();
  const double per_step = 1.0 / std::max<int64_t>(1, steps);
  for (size_t i = 0; i < n; ++i) {
    auto it = stats.find(phases[i]);
    const double s = it == stats.end() ? 0 : it->second.total_seconds * per_step;
    mn[i] = mean[i] = mx[i] = s;
    bytes[i] = it == stats.end() ? 0 : static_cast<double>(it->second.bytes) * per_step;
  }
  comm->AllReduceMin(mn.data(), n, GroupKind::kWorld);
  comm->AllReduceMax(mx.data(), n, GroupKind::kWorld);
  comm->AllReduceSum(mean.data(), n, GroupKind::kWorld);
  comm->AllReduceSum(bytes.data(), n, GroupKind::kWorld);
  const double world = comm->Size(GroupKind::kWorld);
  for (size_t i = 0; i < n; ++i) {
    mean[i] /= world;
    bytes[i] /= world;
  }
  return FormatPhaseTable(phases, mn, mean, mx, bytes);
}

}  // namespace moe
