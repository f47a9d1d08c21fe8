// Learning-rate schedule: linear warm-up, then cosine decay.
#pragma once

namespace moe {

// step is 0-based; W = warmup_steps, T = total_steps, min = peak_lr * min_lr_ratio.
//   step <= W:  linear from peak/W at step 0 to peak at step W:
//               peak * (1/W + (1 - 1/W) * step / W)
//   W <= step <= T-1:  cosine from peak at step W to min at step T-1:
//               min + (peak - min) * 0.5 * (1 + cos(pi * (step - W) / (T - 1 - W)))
//   step >= T-1: min.
// W <= 0 means no warm-up (cosine from step 0). If T - 1 <= W there is no room for the decay and
// steps >= T-1 get min (the end value wins); steps before that follow the warm-up.
float WarmupCosineLr(int step, int total_steps, int warmup_steps, float peak_lr,
                     float min_lr_ratio);

}  // namespace moe
