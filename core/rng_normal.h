// The router noise's standard normal draw in float, written ONCE for the host (core/rng.cc,
// CounterRng::NormalF32) and the device (core/kernels/cuda/moe_routing_kernels.h,
// cuda_rng::NormalF32), so that both compute it with the same float operations in the same order
// and agree bit for bit. Every operation rounds once: on the device through the __f*_rn
// intrinsics (which nvcc never contracts into FMAs); on the host through plain float arithmetic in
// core/rng.cc, which turns FMA contraction off for itself.
//
// Box-Muller on two 32-bit words (w1, w2) of one Philox block:
//   u1    = ((w1 >> 9) + 1/2) / 2^23          in (0, 1), exact in float
//   r     = sqrt(-2 Log(u1))                  r <= sqrt(48 ln 2) = 5.77
//   theta = 2 pi ((w2 >> 8) + 1/2) / 2^24     the centre of one of 2^24 equal cells
//   z0 = r cos(theta), z1 = r sin(theta)      two independent N(0, 1) draws
// Log and the sine/cosine are short polynomials (below) instead of libm's, whose last bits differ
// between glibc and CUDA; both are within a few float ulps of the true functions.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/float_rn.h"

#if defined(__CUDACC__)
#define MOE_RNG_HD __host__ __device__ __forceinline__
#else
#define MOE_RNG_HD inline
#endif

namespace moe {
namespace normal_f32 {

using float_rn::Mul;
using float_rn::Add;
using float_rn::Div;
using float_rn::Sqrt;
using float_rn::BitsOf;
using float_rn::FloatOf;

// ln(u) for a normal float u in (0, 1]: u = m 2^e with m in [sqrt(1/2), sqrt(2)), then
// ln m = 2 atanh(f), f = (m - 1) / (m + 1), |f| <= 0.1716, by its series to f^9 (the first term
// left out, 2 f^11 / 11, is below 7e-10). m - 1 is exact (Sterbenz).
MOE_RNG_HD float Log(float u) {
  const uint32_t bits = BitsOf(u);
  // Selects, not branches, so that the host's bulk loop vectorises.
  const float m2 = FloatOf((bits & 0x007FFFFFu) | 0x3F800000u);  // [1, 2)
  const int halve = m2 > 1.41421354f;
  const float m = Mul(m2, Add(1.f, Mul(-0.5f, static_cast<float>(halve))));  // m2 or m2 / 2
  const int e = static_cast<int>(bits >> 23) - 127 + halve;
  const float f = Div(Add(m, -1.f), Add(m, 1.f));
  const float s = Mul(f, f);
  float p = Add(0.285714298f, Mul(s, 0.222222224f));  // 2/7, 2/9
  p = Add(0.400000006f, Mul(s, p));                    // 2/5
  p = Add(0.666666687f, Mul(s, p));                    // 2/3
  p = Add(2.f, Mul(s, p));
  return Add(Mul(static_cast<float>(e), 0.693147182f), Mul(f, p));
}

// cos and sin of theta = 2 pi (a + 1/2) / 2^24 for a 24-bit a. The top two bits pick the
// quadrant q, the other 22 the offset x = (low - (2^22 - 1) / 2) (pi/2) / 2^22 in (-pi/4, pi/4)
// from the quadrant's middle (the subtraction is exact), so theta = q pi/2 + pi/4 + x. Taylor
// series of sin and cos on |x| <= pi/4 (first terms left out: 1.7e-9 and 2.1e-10), then the
// rotation by pi/4 and by the quadrant.
MOE_RNG_HD void CosSinTurn(uint32_t a, float* cos_out, float* sin_out) {
  const uint32_t q = (a >> 22) & 3u;
  const float t = Add(static_cast<float>(static_cast<int32_t>(a & 0x003FFFFFu)), -2097151.5f);
  const float x = Mul(t, 3.74507039e-07f);  // (pi/2) / 2^22
  const float s = Mul(x, x);
  float ps = Add(-0.000198412701f, Mul(s, 2.75573188e-06f));  // -1/7!, 1/9!
  ps = Add(0.00833333377f, Mul(s, ps));                       // 1/5!
  ps = Add(-0.166666672f, Mul(s, ps));                        // -1/3!
  const float sin_x = Add(x, Mul(Mul(x, s), ps));
  float pc = Add(2.48015876e-05f, Mul(s, -2.755732e-07f));  // 1/8!, -1/10!
  pc = Add(-0.00138888892f, Mul(s, pc));                    // -1/6!
  pc = Add(0.0416666679f, Mul(s, pc));                      // 1/4!
  pc = Add(-0.5f, Mul(s, pc));
  const float cos_x = Add(1.f, Mul(s, pc));
  // cos(pi/4 + x) and sin(pi/4 + x).
  const float c = Mul(Add(cos_x, -sin_x), 0.707106769f);
  const float sn = Mul(Add(cos_x, sin_x), 0.707106769f);
  // Quadrant q turns (c, sn) by q pi/2: (c, sn), (-sn, c), (-c, -sn), (sn, -c).
  const float odd_c = (q & 1u) ? sn : c, odd_s = (q & 1u) ? c : sn;
  *cos_out = ((q + 1u) & 2u) ? -odd_c : odd_c;
  *sin_out = (q & 2u) ? -odd_s : odd_s;
}

// r^2 = -2 Log(u1) of the radius word w1 (the int conversion is exact: w1 >> 9 < 2^23).
MOE_RNG_HD float RadiusSquared(uint32_t w1) {
  const float u1 = Mul(Add(static_cast<float>(static_cast<int32_t>(w1 >> 9)), 0.5f),
                       1.1920929e-07f);  // 2^-23
  return Mul(-2.f, Log(u1));
}

// The two draws of the word pair (w1, w2), as the header says.
MOE_RNG_HD void BoxMullerPair(uint32_t w1, uint32_t w2, float* z0, float* z1) {
  const float r = Sqrt(RadiusSquared(w1));
  float c, s;
  CosSinTurn(w2 >> 8, &c, &s);
  *z0 = Mul(r, c);
  *z1 = Mul(r, s);
}

// Draw j (0..3) of a block: pair j / 2 (words 2 (j / 2) and 2 (j / 2) + 1), z0 for even j, z1
// for odd j.
MOE_RNG_HD float FromBlock(uint32_t w0, uint32_t w1, uint32_t w2, uint32_t w3, int j) {
  float z0, z1;
  if (j < 2) {
    BoxMullerPair(w0, w1, &z0, &z1);
  } else {
    BoxMullerPair(w2, w3, &z0, &z1);
  }
  return (j & 1) ? z1 : z0;
}

// The Philox counter of draw j of stream i: block j / 4, with the top bit of the last word set,
// so these blocks never coincide with those of CounterRng::Uniform / Normal (which use j < 2^63)
// under the same key.
constexpr uint32_t kBlockTag = 0x80000000u;

}  // namespace normal_f32
}  // namespace moe

#undef MOE_RNG_HD
