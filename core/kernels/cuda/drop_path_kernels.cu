#include "core/kernels/cuda/drop_path_kernels.h"

#include <cuda_runtime.h>
#include <glog/logging.h>

#include <algorithm>

#include "core/kernels/cuda/cuda_check.h"

namespace moe {
namespace {

constexpr int kThreads = 256;  // every launch below; the kernel's __launch_bounds__
// Grid-stride: a few thousand blocks keep every SM busy whatever the batch size.
constexpr int64_t kMaxBlocks = 4096;

__global__ void __launch_bounds__(kThreads)
    ScaleSegmentsKernel(const float* x, const float* scales, int64_t per_segment, int64_t n,
                        float* y) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = x[i] * scales[i / per_segment];
}

}  // namespace

void ScaleSegmentsCuda(const float* x, const float* scales, int64_t segments,
                       int64_t per_segment, float* y, cudaStream_t stream) {
  CHECK(segments >= 0 && per_segment >= 0) << "ScaleSegmentsCuda: segments " << segments
                                           << ", per_segment " << per_segment;
  const int64_t n = segments * per_segment;
  if (n == 0) return;
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks);
  ScaleSegmentsKernel<<<static_cast<int>(blocks), kThreads, 0, stream>>>(x, scales, per_segment,
                                                                         n, y);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moe
