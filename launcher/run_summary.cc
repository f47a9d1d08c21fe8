#include "launcher/run_summary.h"

#include <iomanip>
#include <sstream>

namespace moe {
namespace {

// Values must not break the key=value line or the JSON string.
std::string Token(const std::string& s) {
  std::string out;
  for (char c : s) out.push_back(c == ' ' || c == '"' || c == '\\' || c == '=' ? '_' : c);
  return out.empty() ? "-" : out;
}

// ", \"a2a\": {...}, ..." or nothing when no all-to-all ran.
std::string AllToAllJson(const RunSummary& s) {
  if (s.all_to_alls.empty()) return "";
  std::ostringstream os;
  os << std::setprecision(6) << ", \"a2a\": {";
  for (size_t i = 0; i < s.all_to_alls.size(); ++i) {
    const AllToAllRow& r = s.all_to_alls[i];
    os << (i ? ", " : "") << "\"" << Token(r.phase) << "\": {\"bytes_per_rank\": "
       << r.bytes_per_rank << ", \"ms\": " << r.ms << ", \"skew_ms\": " << r.skew_ms
       << ", \"transfer_ms\": " << r.transfer_ms << ", \"device_ms\": " << r.device_ms
       << ", \"algbw_gbs\": " << r.algbw_gbs << ", \"busbw_gbs\": " << r.busbw_gbs << "}";
  }
  os << "}, \"a2a_ep_size\": " << s.ep_size << ", \"a2a_straggler\": {\"rank\": "
     << s.straggler_rank << ", \"fraction\": " << s.straggler_fraction << "}";
  return os.str();
}

}  // namespace

std::string FormatSummaryLine(const RunSummary& s) {
  std::ostringstream os;
  os << "summary: family=" << Token(s.family) << " model=" << Token(s.model)
     << " params=" << s.total_params() << " dense_params=" << s.dense_params
     << " expert_params=" << s.expert_params << " flops_per_image=" << std::fixed
     << std::setprecision(0) << s.flops_per_image << " images_per_s=" << std::setprecision(1)
     << s.images_per_s << " train_wall_s=" << s.train_wall_s << " steps=" << s.steps
     << " global_batch=" << s.global_batch << " ranks=" << s.world
     << " test_accuracy=" << std::setprecision(4) << s.test_accuracy;
  if (s.best_epoch > 0)
    os << " best_test_accuracy=" << s.best_test_accuracy << " best_epoch=" << s.best_epoch;
  return os.str();
}

std::string SummaryJson(const RunSummary& s) {
  std::ostringstream os;
  os << std::setprecision(9) << "{\"summary\": {\"family\": \"" << Token(s.family)
     << "\", \"model\": \"" << Token(s.model) << "\", \"params\": " << s.total_params()
     << ", \"dense_params\": " << s.dense_params << ", \"expert_params\": " << s.expert_params
     << ", \"flops_per_image\": " << s.flops_per_image << ", \"images_per_s\": " << s.images_per_s
     << ", \"train_wall_s\": " << s.train_wall_s << ", \"steps\": " << s.steps
     << ", \"global_batch\": " << s.global_batch << ", \"ranks\": " << s.world
     << ", \"test_accuracy\": " << s.test_accuracy;
  if (s.best_epoch > 0)
    os << ", \"best_test_accuracy\": " << s.best_test_accuracy
       << ", \"best_epoch\": " << s.best_epoch;
  os << AllToAllJson(s) << "}}";
  return os.str();
}

std::string ModelNameFromConfigPath(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  const size_t dot = base.rfind('.');
  if (dot != std::string::npos && dot > 0) base.resize(dot);
  return base;
}

}  // namespace moe
