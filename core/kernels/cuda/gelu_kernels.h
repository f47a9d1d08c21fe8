// Exact (erf) GELU on device pointers:
//   y  = x * Phi(x) = 0.5 * x * erfc(-x / sqrt(2))
//   dx = dy * (Phi(x) + x * phi(x)),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
// erfc(-x/sqrt2) rather than 1 + erf(x/sqrt2): for negative x the latter cancels and loses
// relative accuracy (at x = -3 about 2e-5), erfcf keeps it to a few ulp.
// Kernels use float4 loads/stores when every pointer is 16-byte aligned, scalar ones otherwise.
// Launches are asynchronous on `stream` (0 = legacy default stream); launch errors are fatal.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace moe {

// y[i] = gelu(x[i]) for i < n. x and y may alias.
void GeluForwardCuda(const float* x, float* y, int64_t n, cudaStream_t stream = nullptr);
// dx[i] = dy[i] * gelu'(x[i]) (written, not accumulated). dx may alias dy.
void GeluBackwardCuda(const float* x, const float* dy, float* dx, int64_t n,
                      cudaStream_t stream = nullptr);

// ReLU, for pMoE's experts: y[i] = max(x[i], 0); dx[i] = dy[i] where x[i] > 0, else 0 (the
// derivative at exactly 0 is taken as 0, as on the host). Scalar grid-stride kernels: ReLU is
// memory-bound and runs on the experts' hidden activations only. x and y, dy and dx may alias.
void ReluForwardCuda(const float* x, float* y, int64_t n, cudaStream_t stream = nullptr);
void ReluBackwardCuda(const float* x, const float* dy, float* dx, int64_t n,
                      cudaStream_t stream = nullptr);

}  // namespace moe
