#include "core/kernels/cuda/gelu_kernels.h"

#include <cuda_runtime.h>

#include <algorithm>

#include "core/kernels/cuda/cuda_check.h"

namespace moe {

namespace {

constexpr float kInvSqrt2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;
constexpr int kThreads = 256;  // every launch below; the kernels' __launch_bounds__

__device__ __forceinline__ float GeluF(float x) { return 0.5f * x * erfcf(-x * kInvSqrt2); }

__device__ __forceinline__ float GeluGradF(float x, float dy) {
  const float cdf = 0.5f * erfcf(-x * kInvSqrt2);
  const float pdf = kInvSqrt2Pi * expf(-0.5f * x * x);
  return dy * (cdf + x * pdf);
}

__global__ void __launch_bounds__(kThreads)
    GeluForwardScalar(const float* x, float* y, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    y[i] = GeluF(x[i]);
  }
}

// n4 float4 groups, then the n - 4*n4 tail elements handled by the first threads.
__global__ void __launch_bounds__(kThreads)
    GeluForwardVec4(const float4* x, float4* y, int64_t n4, const float* xt, float* yt, int tail) {
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = tid; i < n4; i += stride) {
    const float4 v = x[i];
    y[i] = make_float4(GeluF(v.x), GeluF(v.y), GeluF(v.z), GeluF(v.w));
  }
  if (tid < tail) yt[tid] = GeluF(xt[tid]);
}

__global__ void __launch_bounds__(kThreads)
    GeluBackwardScalar(const float* x, const float* dy, float* dx, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    dx[i] = GeluGradF(x[i], dy[i]);
  }
}

__global__ void __launch_bounds__(kThreads)
    GeluBackwardVec4(const float4* x, const float4* dy, float4* dx, int64_t n4, const float* xt,
                     const float* dyt, float* dxt, int tail) {
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = tid; i < n4; i += stride) {
    const float4 v = x[i];
    const float4 g = dy[i];
    dx[i] = make_float4(GeluGradF(v.x, g.x), GeluGradF(v.y, g.y), GeluGradF(v.z, g.z),
                        GeluGradF(v.w, g.w));
  }
  if (tid < tail) dxt[tid] = GeluGradF(xt[tid], dyt[tid]);
}

__global__ void __launch_bounds__(kThreads) ReluForwardKernel(const float* x, float* y, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    y[i] = fmaxf(x[i], 0.f);
  }
}

__global__ void __launch_bounds__(kThreads)
    ReluBackwardKernel(const float* x, const float* dy, float* dx, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    dx[i] = x[i] > 0.f ? dy[i] : 0.f;
  }
}

bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

int BlocksFor(int64_t work) {
  const int64_t b = (std::max<int64_t>(work, 1) + kThreads - 1) / kThreads;
  return static_cast<int>(std::min<int64_t>(b, 65535));  // grid-stride loops cover the rest
}

}  // namespace

void GeluForwardCuda(const float* x, float* y, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  if (Aligned16(x) && Aligned16(y)) {
    const int64_t n4 = n / 4;
    const int tail = static_cast<int>(n - 4 * n4);
    GeluForwardVec4<<<BlocksFor(n4), kThreads, 0, stream>>>(
        reinterpret_cast<const float4*>(x), reinterpret_cast<float4*>(y), n4, x + 4 * n4,
        y + 4 * n4, tail);
  } else {
    GeluForwardScalar<<<BlocksFor(n), kThreads, 0, stream>>>(x, y, n);
  }
  CUDA_CHECK_LAUNCH();
}

void GeluBackwardCuda(const float* x, const float* dy, float* dx, int64_t n,
                      cudaStream_t stream) {
  if (n <= 0) return;
  if (Aligned16(x) && Aligned16(dy) && Aligned16(dx)) {
    const int64_t n4 = n / 4;
    const int tail = static_cast<int>(n - 4 * n4);
    GeluBackwardVec4<<<BlocksFor(n4), kThreads, 0, stream>>>(
        reinterpret_cast<const float4*>(x), reinterpret_cast<const float4*>(dy),
        reinterpret_cast<float4*>(dx), n4, x + 4 * n4, dy + 4 * n4, dx + 4 * n4, tail);
  } else {
    GeluBackwardScalar<<<BlocksFor(n), kThreads, 0, stream>>>(x, dy, dx, n);
  }
  CUDA_CHECK_LAUNCH();
}

void ReluForwardCuda(const float* x, float* y, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  ReluForwardKernel<<<BlocksFor(n), kThreads, 0, stream>>>(x, y, n);
  CUDA_CHECK_LAUNCH();
}

void ReluBackwardCuda(const float* x, const float* dy, float* dx, int64_t n,
                      cudaStream_t stream) {
  if (n <= 0) return;
  ReluBackwardKernel<<<BlocksFor(n), kThreads, 0, stream>>>(x, dy, dx, n);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moe
