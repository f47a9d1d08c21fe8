#include "models/moe/capacity.h"

#include <glog/logging.h>

#include <algorithm>
#include <cmath>

namespace moe {

int64_t CapacityPerExpert(int top_k, int64_t group_tokens, double capacity_factor, int num_experts,
                          CapacityRounding rounding) {
  CHECK_GE(top_k, 1) << "CapacityPerExpert: top_k";
  CHECK_GE(group_tokens, 0) << "CapacityPerExpert: group_tokens";
  CHECK(capacity_factor > 0 && std::isfinite(capacity_factor))
      << "CapacityPerExpert: capacity_factor must be finite and > 0, got " << capacity_factor;
  CHECK_GE(num_experts, 1) << "CapacityPerExpert: num_experts";
  constexpr double kRelEps = 1e-7;  // > float half-ulp 2^-24 (see capacity.h)
  const double x = static_cast<double>(top_k) * static_cast<double>(group_tokens) *
                   capacity_factor / static_cast<double>(num_experts);
  int64_t c = 0;
  switch (rounding) {
    case CapacityRounding::kRound:
      c = static_cast<int64_t>(std::round(x * (1.0 + kRelEps)));  // half away from zero
      break;
    case CapacityRounding::kCeil:
    case CapacityRounding::kCeilMultipleOf4:
      c = static_cast<int64_t>(std::ceil(x * (1.0 - kRelEps)));
      break;
  }
  c = std::max<int64_t>(c, 1);
  if (rounding == CapacityRounding::kCeilMultipleOf4) c = (c + 3) / 4 * 4;
  return c;
}

}  // namespace moe
