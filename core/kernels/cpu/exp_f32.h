// exp(x) in float for the router's softmax, written ONCE for the host (models/moe/router_math.cc)
// and the device (core/kernels/cuda/moe_routing_kernels.cu) so that both compute it with the same
// float operations in the same order and agree bit for bit (as core/rng_normal.h does for the
// noise). Every operation rounds once: on the device through the __f*_rn intrinsics (which nvcc
// never contracts into FMAs); on the host through plain float arithmetic in a file that turns FMA
// contraction off. Branch-free (selects and bit casts), so the host's row loops vectorise.
//
//   n = round(x / ln 2), r = x - n ln2_hi - n ln2_lo         |r| <= ln2 / 2 (Cody-Waite: n ln2_hi
//                                                           is exact for |n| < 2^8)
//   exp(r) by its Taylor series to r^7 (the first term left out, r^8 / 8! <= 5.3e-9 relative)
//   exp(x) = 2^n exp(r), 2^n built from its exponent bits
// Domain: x <= 0 (the softmax passes x - max). Relative error within 2 float ulps of exp(x) for
// x >= -87.3 (the measured worst case, tests/unit/exp_f32_test.cc, is below that); below -87.3,
// where exp(x) < 2^-126 is subnormal or zero, it returns 0 (an absolute error below 1.2e-38,
// invisible next to a softmax denominator >= 1). NaN in, NaN out.
#pragma once

#include <cstdint>
#include <cstring>

#include "core/float_rn.h"

#if defined(__CUDACC__)
#define MOE_EXP_HD __host__ __device__ __forceinline__
#else
#define MOE_EXP_HD inline
#endif

namespace moe {
namespace exp_f32 {

using float_rn::Mul;
using float_rn::Add;
using float_rn::BitsOf;
using float_rn::FloatOf;

// Below this exp(x) is under 2^-126 (FLT_MIN): the result is 0.
constexpr float kUnderflow = -87.3f;

MOE_EXP_HD float Exp(float x) {
  // 1.5 * 2^23: adding it rounds t to an integer (to nearest even) held in the low mantissa bits,
  // and subtracting it back gives that integer as a float; both adds are exact for |t| < 2^22.
  const float kShift = 12582912.f;
  const float t = Mul(x, 1.44269502f);  // 1 / ln 2
  const float shifted = Add(t, kShift);
  const float n = Add(shifted, -kShift);
  // n's integer from the shifted float's bits (no float -> int conversion, so NaN is no UB).
  const uint32_t n_bits = BitsOf(shifted) - BitsOf(kShift);
  const float r = Add(Add(x, Mul(n, -0.693145752f)), Mul(n, -1.42860677e-06f));  // ln2 hi, lo
  float p = Add(1.38888889e-3f, Mul(r, 1.98412698e-4f));  // 1/6!, 1/7!
  p = Add(8.33333377e-3f, Mul(r, p));                     // 1/5!
  p = Add(4.16666679e-2f, Mul(r, p));                     // 1/4!
  p = Add(0.166666672f, Mul(r, p));                       // 1/3!
  p = Add(0.5f, Mul(r, p));
  p = Add(1.f, Mul(r, p));
  p = Add(1.f, Mul(r, p));
  // 2^n for n in [-126, 0]: exponent field n + 127 (unsigned arithmetic: wraps, never UB).
  const float two_n = FloatOf((n_bits + 127u) << 23);
  // 0 below the cut: a mask on the bits rather than a select, which the host compilers turn into
  // branches for some targets (and branches stop the row loops from vectorising). NaN fails the
  // comparison, so it keeps its (NaN) bits.
  const uint32_t keep = 0u - static_cast<uint32_t>(!(x < kUnderflow));
  return FloatOf(BitsOf(Mul(p, two_n)) & keep);
}

}  // namespace exp_f32
}  // namespace moe

#undef MOE_EXP_HD
