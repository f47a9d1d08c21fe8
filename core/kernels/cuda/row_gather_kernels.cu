// See row_gather_kernels.h. Gather / scatter: one thread per element (grid-stride, int64
// indexing); dots: one warp per row, double partial sums reduced in a fixed order.
#include "core/kernels/cuda/row_gather_kernels.h"

#include <glog/logging.h>

#include <algorithm>

#include "core/kernels/cuda/cuda_check.h"

namespace moe {

namespace {

constexpr int kThreads = 256;

int Blocks(int64_t work) {
  return static_cast<int>(std::min<int64_t>((work + kThreads - 1) / kThreads, 65535 * 8));
}

__global__ void __launch_bounds__(kThreads)
    GatherRowsKernel(const float* __restrict__ src, const int* __restrict__ idx,
                     const float* __restrict__ scale, int64_t n, int64_t D,
                     float* __restrict__ dst) {
  const int64_t total = n * D;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = i / D, c = i - j * D;
    const float v = src[static_cast<int64_t>(idx[j]) * D + c];
    dst[i] = scale != nullptr ? __fmul_rn(scale[j], v) : v;
  }
}

__global__ void __launch_bounds__(kThreads)
    ScatterAddRowsKernel(const float* __restrict__ src, const int* __restrict__ idx,
                         const float* __restrict__ scale, int64_t n, int64_t D,
                         float* __restrict__ dst) {
  const int64_t total = n * D;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = i / D, c = i - j * D;
    const float v = scale != nullptr ? __fmul_rn(scale[j], src[i]) : src[i];
    float* d = dst + static_cast<int64_t>(idx[j]) * D + c;
    *d = __fadd_rn(*d, v);
  }
}

// One warp per row j.
__global__ void __launch_bounds__(kThreads)
    GatheredRowDotsKernel(const float* __restrict__ a, const int* __restrict__ idx,
                          const float* __restrict__ b, int64_t n, int64_t D,
                          float* __restrict__ out) {
  const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= n) return;
  const float* ar = a + static_cast<int64_t>(idx[warp]) * D;
  const float* br = b + warp * D;
  double s = 0;
  for (int64_t c = lane; c < D; c += 32) s += static_cast<double>(ar[c]) * br[c];
  for (int off = 16; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off);
  if (lane == 0) out[warp] = static_cast<float>(s);
}

}  // namespace

void GatherRowsCuda(const float* src, const int* idx, const float* scale, int64_t n, int64_t D,
                    float* dst, cudaStream_t stream) {
  CHECK(n >= 0 && D >= 0);
  if (n == 0 || D == 0) return;
  GatherRowsKernel<<<Blocks(n * D), kThreads, 0, stream>>>(src, idx, scale, n, D, dst);
  CUDA_CHECK_LAUNCH();
}

void ScatterAddRowsCuda(const float* src, const int* idx, const float* scale, int64_t n,
                        int64_t D, float* dst, cudaStream_t stream) {
  CHECK(n >= 0 && D >= 0);
  if (n == 0 || D == 0) return;
  ScatterAddRowsKernel<<<Blocks(n * D), kThreads, 0, stream>>>(src, idx, scale, n, D, dst);
  CUDA_CHECK_LAUNCH();
}

void GatheredRowDotsCuda(const float* a, const int* idx, const float* b, int64_t n, int64_t D,
                         float* out, cudaStream_t stream) {
  CHECK(n >= 0 && D >= 0);
  if (n == 0) return;
  const int64_t threads = n * 32;
  const int64_t blocks = (threads + kThreads - 1) / kThreads;
  CHECK_LT(blocks, int64_t{1} << 31);
  GatheredRowDotsKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a, idx, b, n, D,
                                                                                 out);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moe
