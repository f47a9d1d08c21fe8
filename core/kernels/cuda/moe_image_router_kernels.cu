// Per-image router input kernels (contracts in moe_image_router_kernels.h). Element-wise and
// memory-bound: a thread per output element, consecutive threads on consecutive j, so every
// token row is read coalesced. __fdiv_rn / __fadd_rn pin the rounding to the host's (IEEE float
// division and addition; no contraction, no fast-math reciprocal).
#include "core/kernels/cuda/moe_image_router_kernels.h"

#include <cuda_runtime.h>
#include <glog/logging.h>

#include <algorithm>

#include "core/kernels/cuda/cuda_check.h"

namespace moe {

namespace {

constexpr int kThreads = 256;

int GridFor(int64_t n) {
  const int64_t b = (std::max<int64_t>(n, 1) + kThreads - 1) / kThreads;
  return static_cast<int>(std::min<int64_t>(b, int64_t{1} << 20));
}

__global__ void __launch_bounds__(kThreads)
    ImageMeanKernel(const float* x, int64_t images, int64_t T, int64_t D, float* mean) {
  const float tf = static_cast<float>(T);
  const int64_t n = images * D;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / D, j = i % D;
    const float* col = x + b * T * D + j;
    float acc = 0.f;
    for (int64_t t = 0; t < T; ++t) acc = __fadd_rn(acc, __fdiv_rn(col[t * D], tf));
    mean[i] = acc;
  }
}

__global__ void __launch_bounds__(kThreads)
    ImageMeanBackwardKernel(const float* d_mean, int64_t images, int64_t T, int64_t D, float* dx) {
  const float tf = static_cast<float>(T);
  const int64_t n = images * T * D;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / D, j = i % D;
    dx[i] = __fadd_rn(dx[i], __fdiv_rn(d_mean[(row / T) * D + j], tf));
  }
}

void CheckShape(int64_t images, int64_t T, int64_t D) {
  CHECK_GE(images, 0);
  CHECK_GT(T, 0);
  CHECK_GE(D, 0);
}

}  // namespace

void ImageMeanRowsCuda(const float* x, int64_t images, int64_t T, int64_t D, float* mean,
                       cudaStream_t stream) {
  CheckShape(images, T, D);
  if (images * D == 0) return;
  ImageMeanKernel<<<GridFor(images * D), kThreads, 0, stream>>>(x, images, T, D, mean);
  CUDA_CHECK_LAUNCH();
}

void ImageMeanRowsBackwardCuda(const float* d_mean, int64_t images, int64_t T, int64_t D,
                               float* dx, cudaStream_t stream) {
  CheckShape(images, T, D);
  if (images * T * D == 0) return;
  ImageMeanBackwardKernel<<<GridFor(images * T * D), kThreads, 0, stream>>>(d_mean, images, T, D,
                                                                            dx);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moe
