#include "core/kernels/cuda/adamw_kernels.h"

#include <cuda_runtime.h>
#include <glog/logging.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/kernels/cuda/cuda_check.h"

// Launch: 256 threads/block, at most 65535 blocks, grid-stride over n/4 float4 groups (or n
// elements on the scalar path); the n % 4 tail of the float4 path is done by the first threads.
namespace moe {

namespace {

constexpr int kThreads = 256;

struct AdamWScalars {
  float lr, b1, b2, one_minus_b1, one_minus_b2, eps, decay, bc1, bc2_sqrt;
};

// The CPU loop body of AdamW::Step, operation for operation.
__device__ __forceinline__ void AdamWElement(const AdamWScalars& s, float& w, float g, float& m,
                                             float& v) {
  m = __fadd_rn(__fmul_rn(s.b1, m), __fmul_rn(s.one_minus_b1, g));
  v = __fadd_rn(__fmul_rn(s.b2, v), __fmul_rn(__fmul_rn(s.one_minus_b2, g), g));
  const float m_hat = __fdiv_rn(m, s.bc1);
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), s.bc2_sqrt), s.eps);
  w = __fsub_rn(__fsub_rn(w, __fmul_rn(s.decay, w)), __fdiv_rn(__fmul_rn(s.lr, m_hat), denom));
}

__global__ void __launch_bounds__(kThreads)
    AdamWVec4Kernel(float4* __restrict__ w, const float4* __restrict__ g, float4* __restrict__ m,
                    float4* __restrict__ v, int64_t n4, float* __restrict__ wt,
                    const float* __restrict__ gt, float* __restrict__ mt, float* __restrict__ vt,
                    int tail, AdamWScalars s) {
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = tid; i < n4; i += stride) {
    float4 wi = w[i], mi = m[i], vi = v[i];
    const float4 gi = g[i];
    AdamWElement(s, wi.x, gi.x, mi.x, vi.x);
    AdamWElement(s, wi.y, gi.y, mi.y, vi.y);
    AdamWElement(s, wi.z, gi.z, mi.z, vi.z);
    AdamWElement(s, wi.w, gi.w, mi.w, vi.w);
    w[i] = wi;
    m[i] = mi;
    v[i] = vi;
  }
  if (tid < tail) AdamWElement(s, wt[tid], gt[tid], mt[tid], vt[tid]);
}

__global__ void __launch_bounds__(kThreads)
    AdamWScalarKernel(float* __restrict__ w, const float* __restrict__ g, float* __restrict__ m,
                      float* __restrict__ v, int64_t n, AdamWScalars s) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    AdamWElement(s, w[i], g[i], m[i], v[i]);
  }
}

bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

int BlocksFor(int64_t work) {
  const int64_t b = (std::max<int64_t>(work, 1) + kThreads - 1) / kThreads;
  return static_cast<int>(std::min<int64_t>(b, 65535));
}

}  // namespace

void AdamWStepCuda(float* param, const float* grad, float* m, float* v, int64_t n, float lr,
                   float beta1, float beta2, float eps, float weight_decay, int64_t step,
                   cudaStream_t stream) {
  CHECK_GE(step, 1) << "AdamWStepCuda: step is 1-based";
  if (n <= 0) return;
  // As AdamW::Step: bias corrections in double, then rounded to float.
  const double t = static_cast<double>(step);
  AdamWScalars s;
  s.lr = lr;
  s.b1 = beta1;
  s.b2 = beta2;
  s.one_minus_b1 = 1.f - beta1;
  s.one_minus_b2 = 1.f - beta2;
  s.eps = eps;
  s.decay = lr * weight_decay;
  s.bc1 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta1), t));
  s.bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(static_cast<double>(beta2), t)));
  if (Aligned16(param) && Aligned16(grad) && Aligned16(m) && Aligned16(v)) {
    const int64_t n4 = n / 4;
    const int tail = static_cast<int>(n - 4 * n4);
    AdamWVec4Kernel<<<BlocksFor(n4), kThreads, 0, stream>>>(
        reinterpret_cast<float4*>(param), reinterpret_cast<const float4*>(grad),
        reinterpret_cast<float4*>(m), reinterpret_cast<float4*>(v), n4, param + 4 * n4,
        grad + 4 * n4, m + 4 * n4, v + 4 * n4, tail, s);
  } else {
    AdamWScalarKernel<<<BlocksFor(n), kThreads, 0, stream>>>(param, grad, m, v, n, s);
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace moe
