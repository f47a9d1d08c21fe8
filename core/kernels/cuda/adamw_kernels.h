// AdamW update on device pointers, the same update as core/optim/adamw.cc (AdamW::Step) for one
// parameter tensor:
//   m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g g
//   w <- w - (lr * wd) w - lr * (m / bc1) / (sqrt(v) / bc2_sqrt + eps)
// with bc1 = 1 - b1^step and bc2_sqrt = sqrt(1 - b2^step) computed on the host in double and
// rounded to float, exactly as AdamW::Step does. The kernel performs the CPU's float operations
// in the CPU's order with explicit round-to-nearest intrinsics (no FMA contraction, IEEE division
// and square root), so it reproduces a non-FMA host build bit for bit.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace moe {

// param, m, v updated in place; grad read. n elements each, no aliasing between the four arrays.
// step is the 1-based step count AFTER the increment (AdamW::step_count() once Step has begun).
// weight_decay is the config's value where DecayApplies(name), 0 otherwise (the CPU multiplies
// lr * weight_decay in float; this does the same on the host).
// float4 accesses when all four pointers are 16-byte aligned.
void AdamWStepCuda(float* param, const float* grad, float* m, float* v, int64_t n, float lr,
                   float beta1, float beta2, float eps, float weight_decay, int64_t step,
                   cudaStream_t stream = nullptr);

}  // namespace moe
