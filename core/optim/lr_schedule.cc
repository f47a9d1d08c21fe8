#include "core/optim/lr_schedule.h"

#include <cmath>

namespace moe {

float WarmupCosineLr(int step, int total_steps, int warmup_steps, float peak_lr,
                     float min_lr_ratio) {
  const double peak = peak_lr;
  const double min_lr = peak * min_lr_ratio;
  const int last = total_steps - 1;
  if (step >= last) return static_cast<float>(min_lr);
  if (warmup_steps > 0 && step < warmup_steps) {
    const double w = warmup_steps;
    return static_cast<float>(peak * (1.0 / w + (1.0 - 1.0 / w) * step / w));
  }
  const int w = warmup_steps > 0 ? warmup_steps : 0;
  const double span = last - w;  // > 0 here since w <= step < last
  const double progress = (step - w) / span;
  const double kPi = 3.14159265358979323846;
  return static_cast<float>(min_lr + (peak - min_lr) * 0.5 * (1.0 + std::cos(kPi * progress)));
}

}  // namespace moe
