#include "launcher/merged_trace.h"

#include <vector>

namespace moe {

std::string GatherMergedTrace(const Profiler& profiler, MpiCommunicator* comm) {
  double earliest = profiler.origin_common_us();
  comm->AllReduceMin(&earliest, 1, GroupKind::kWorld);
  const int rank = comm->Rank(GroupKind::kWorld);
  std::string mine = profiler.ChromeTraceEventLines(rank, profiler.origin_common_us() - earliest);
  double dropped = static_cast<double>(profiler.dropped_events());
  comm->AllReduceSum(&dropped, 1, GroupKind::kWorld);
  std::vector<std::string> all;
  comm->GatherBytes(mine, 0, &all);
  if (rank != 0) return std::string();
  std::string out = "{\"displayTimeUnit\":\"ms\",\"otherData\":{\"clock\":\"common\",";
  out += "\"dropped_events\":" + std::to_string(static_cast<long long>(dropped)) + "},";
  out += "\"traceEvents\":[\n";
  for (size_t r = 0; r < all.size(); ++r) out += (r ? ",\n" : "") + all[r];
  out += "\n]}\n";
  return out;
}

bool WriteMergedTrace(const Profiler& profiler, MpiCommunicator* comm, const std::string& path,
                      std::string* error) {
  const std::string json = GatherMergedTrace(profiler, comm);
  if (comm->Rank(GroupKind::kWorld) != 0) return true;
  return WriteTextFileChecked(path, json, error);
}

}  // namespace moe
