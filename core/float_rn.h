// Float operations that round exactly once on the host and on the device, for the code written
// ONCE for both that must agree bit for bit (core/rng_normal.h: the router noise;
// core/kernels/cpu/exp_f32.h: the router softmax's exp). On the device they are the __f*_rn
// intrinsics, which nvcc never contracts into FMAs; on the host plain float arithmetic, so the
// including file must turn FMA contraction off for itself (each such file says so).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define MOE_FLOAT_RN_HD __host__ __device__ __forceinline__
#else
#define MOE_FLOAT_RN_HD inline
#endif

namespace moe {
namespace float_rn {

MOE_FLOAT_RN_HD float Mul(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

MOE_FLOAT_RN_HD float Add(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

MOE_FLOAT_RN_HD float Div(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

MOE_FLOAT_RN_HD float Sqrt(float a) {
#ifdef __CUDA_ARCH__
  return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}

// The bits of a float and back (no rounding).
MOE_FLOAT_RN_HD uint32_t BitsOf(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

MOE_FLOAT_RN_HD float FloatOf(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

}  // namespace float_rn
}  // namespace moe

#undef MOE_FLOAT_RN_HD
