// Stochastic depth on device pointers (models/layers/drop_path.h, Backend::ScaleSegments):
//   y[b * per_segment + i] = x[b * per_segment + i] * scales[b]
// for b < segments (one segment per image) and i < per_segment. One float multiply per element,
// as on the host, so both paths give the same bits. The launch is asynchronous on `stream`
// (0 = legacy default stream); launch errors are fatal.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace moe {

// x, scales and y are device pointers; x and y may alias.
void ScaleSegmentsCuda(const float* x, const float* scales, int64_t segments,
                       int64_t per_segment, float* y, cudaStream_t stream = nullptr);

}  // namespace moe
