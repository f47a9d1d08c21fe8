// Every multiply-add is one explicit operation whose rounding the CPU's clone decides (below) and
// every other operation is plain float arithmetic rounded once (contraction off, so the compiler
// fuses nothing on its own): every lane of every vector width, and a loop's scalar remainder,
// computes the same bits.
#pragma GCC optimize("fp-contract=off")

#include "core/kernels/cpu/gelu.h"

#include <cstdint>

#include "core/float_rn.h"

// Speed: GELU and the router's load loss evaluate the normal tail for every element, so it is
// written here as branch-free float arithmetic that vectorises: one exp, two short polynomials
// and one divide, the exp shared by the tail and the density. glibc's vector erfc and exp
// (libmvec, used here before) were 1.7x slower in the forward and 2.1x in the backward, and less
// accurate in the far tail (tests/bench/RESULTS.md). The Horner steps and the exp's reduction
// are fused multiply-adds: a GELU with its derivative takes 29 float operations per element
// instead of 51 (0.41 against 0.61 ns per element on one AVX-512 core; tests/bench/RESULTS.md).
//
// Each loop is compiled three times (GCC function multi-versioning, picked once at load time by
// the CPU): x86-64-v4 (AVX-512, 16 lanes), x86-64-v3 (AVX2 with FMA, 8) and the baseline (SSE2,
// 4). The v3 and v4 clones fuse each multiply-add (one FMA instruction, rounded once), so they give
// the same bits. The baseline clone, which only CPUs without the v3 set pick (before 2013, or a
// VM that hides it), multiplies and adds with two roundings: an exact fmaf there is glibc's
// software routine, 1,400x slower than the v4 clone (measured: 617 against 0.44 ns per element),
// and an exact emulation in doubles would still be tens of times slower. Its bits differ from the
// fused ones in the last places, as OpenBLAS's GEMMs differ between its kernels; within one
// machine every rank and every call runs the same clone, so a row's GELU never depends on the
// layout or on which rows share a call.
#define MOE_SIMD_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
// A clone built for another arch does not inline ordinary inline functions of the default target
// (GCC: "target specific option mismatch"); each would then be a call per element, unvectorised.
#define MOE_INLINE inline __attribute__((always_inline))

namespace moe {

namespace {

constexpr float kInvSqrt2Pi = 0.398942280f;  // 1 / sqrt(2 pi)

// Beyond |z| = 12 the tail and density take their values at 12 (Q(12) = 1.8e-33, phi(12) =
// 5.4e-32): absolute errors below those, and the exp stays far from underflow (z^2 / 2 <= 72).
constexpr float kTailCut = 12.f;

// The two roundings of a multiply-add a * b + c: Fused in the v3/v4 clones, Separate in the
// baseline one (see the top of this file).
struct Fused {
  static MOE_INLINE float Apply(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
};
struct Separate {
  static MOE_INLINE float Apply(float a, float b, float c) { return a * b + c; }
};

// True when the resolver picked a v3 or v4 clone: the same test as target_clones' own resolver
// (x86-64-v4 implies v3), so each clone knows at run time which multiply-add it stands for.
const bool kFusedClone = [] {
  __builtin_cpu_init();
  return __builtin_cpu_supports("x86-64-v3") != 0;
}();

// exp(x) for x in [-72, 0] (the tail's argument -z^2 / 2 with z cut at 12; NaN gives NaN): the
// softmax's exp (core/kernels/cpu/exp_f32.h: Cody-Waite reduction to |r| <= ln2 / 2, Taylor
// series to r^7, 2^n from its exponent bits), its multiply-adds rounded as M says. That one
// always keeps separate roundings because the CUDA softmax must reproduce its bits; this one has
// no device twin. No underflow cut: exp(-72) = 5.4e-32 is a normal float. Fused, within 0.94 ulp
// of exp(x) for every float x in [-72, 0] (all 1.1 billion of them, checked against double exp
// when this was written); separate, the softmax's exp (within 2 ulps), which the budget below
// allows for both.
template <class M>
MOE_INLINE float ExpOfTailArgument(float x) {
  const float kShift = 12582912.f;  // 1.5 * 2^23: adding it rounds to an integer (exact here)
  const float shifted = M::Apply(x, 1.44269502f, kShift);  // x / ln 2 + shift
  const float n = shifted - kShift;
  const uint32_t n_bits = float_rn::BitsOf(shifted) - float_rn::BitsOf(kShift);
  // x - n ln2 with ln2 = hi + lo, hi short enough that n hi is exact.
  const float r = M::Apply(n, -1.42860677e-06f, M::Apply(n, -0.693145752f, x));
  float p = M::Apply(r, 1.98412698e-4f, 1.38888889e-3f);  // 1/7!, 1/6!
  p = M::Apply(r, p, 8.33333377e-3f);                    // 1/5!
  p = M::Apply(r, p, 4.16666679e-2f);                    // 1/4!
  p = M::Apply(r, p, 0.166666672f);                      // 1/3!
  p = M::Apply(r, p, 0.5f);
  p = M::Apply(r, p, 1.f);
  p = M::Apply(r, p, 1.f);
  return p * float_rn::FloatOf((n_bits + 127u) << 23);  // n in [-104, 0]: a normal 2^n
}

// The Mills ratio M(z) = Q(z) / phi(z) (Q = 1 - Phi) for 0 <= z <= 12 as M = 1 / (z + c(z)),
// c(z) = 1 / M(z) - z, which falls smoothly from sqrt(2 / pi) at 0 to about 1 / z. c ~= P / R,
// degrees 4 and 5, fitted for least maximum relative error on [0, 12] by
// core/kernels/cpu/normal_tail_fit.py, which prints these constants and checks them: the fit is
// within 0.48 u of M (u = 2^-24), and M evaluated in float as below, R / (z R + P), within 2.9 u
// with fused Horner steps and 3.0 u with separate ones over 600,000 points. An error in c moves M
// only by c / (z + c) of it, so one divide suffices.
constexpr float kP0 = 7.978845835e-01f, kP1 = 5.219064355e-01f, kP2 = 1.766239107e-01f,
                kP3 = 3.272215277e-02f, kP4 = 2.858401742e-03f;
constexpr float kR1 = 1.109542608e+00f, kR2 = 5.900607705e-01f, kR3 = 1.821425557e-01f,
                kR4 = 3.273068741e-02f, kR5 = 2.858239459e-03f;

// z >= 0 (already cut at kTailCut). Returns Q(z) = 1 - Phi(z) and sets *density = phi(z).
// Error budget (u = 2^-24): z * z rounds once, moving exp's argument by up to z^2 / 2 u (the
// condition of the problem, which any float implementation shares); the exp adds <= 2 ulps; M's
// float evaluation <= 3.0 u; the products and the quotient 3 roundings.
template <class M>
MOE_INLINE float UpperTailAndDensity(float z, float* density) {
  const float e = ExpOfTailArgument<M>(-0.5f * (z * z));
  // Horner's rule, highest coefficient first.
  float p = M::Apply(kP4, z, kP3);
  p = M::Apply(M::Apply(M::Apply(p, z, kP2), z, kP1), z, kP0);
  float r = M::Apply(kR5, z, kR4);
  r = M::Apply(M::Apply(M::Apply(M::Apply(r, z, kR3), z, kR2), z, kR1), z, 1.f);
  const float phi = kInvSqrt2Pi * e;
  *density = phi;
  return (phi * r) / M::Apply(z, r, p);
}

// Selects as bit masks, not ?: -- GCC turns some float selects into branches, and a branch stops
// the loops below from vectorising (exp_f32.h does the same).
MOE_INLINE float Select(bool take_a, float a, float b) {
  const uint32_t mask = 0u - static_cast<uint32_t>(take_a);
  return float_rn::FloatOf((float_rn::BitsOf(a) & mask) | (float_rn::BitsOf(b) & ~mask));
}
MOE_INLINE float Abs(float v) { return float_rn::FloatOf(float_rn::BitsOf(v) & 0x7fffffffu); }
// NaN compares false and passes through.
MOE_INLINE float CutTail(float z) { return Select(z > kTailCut, kTailCut, z); }

// Phi(x) and phi(x) for any x (NaN gives NaN).
template <class M>
MOE_INLINE float CdfAndDensity(float x, float* density) {
  const float tail = UpperTailAndDensity<M>(CutTail(Abs(x)), density);
  return Select(x < 0.f, tail, 1.f - tail);
}

// The loops, once per multiply-add rounding; each entry point below runs its clone's one.
template <class M>
MOE_INLINE void ForwardLoop(const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    float pdf;
    y[i] = v * CdfAndDensity<M>(v, &pdf);
  }
}

template <class M>
MOE_INLINE void BackwardLoop(const float* x, const float* dy, float* dx, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    float pdf;
    const float cdf = CdfAndDensity<M>(v, &pdf);
    dx[i] = dy[i] * M::Apply(v, pdf, cdf);
  }
}

template <class M>
MOE_INLINE void ForwardWithDerivativeLoop(const float* x, float* y, float* dydx, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    float pdf;
    const float cdf = CdfAndDensity<M>(v, &pdf);
    y[i] = v * cdf;
    dydx[i] = M::Apply(v, pdf, cdf);  // BackwardLoop's factor, the same operation
  }
}

template <class M>
MOE_INLINE void TailAndPdfLoop(const float* z, int64_t n, float* tail, float* pdf) {
  if (pdf == nullptr) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      float unused;
      const float q = UpperTailAndDensity<M>(CutTail(Abs(z[i])), &unused);
      tail[i] = Select(z[i] < 0.f, 1.f - q, q);
    }
    return;
  }
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float q = UpperTailAndDensity<M>(CutTail(Abs(z[i])), &pdf[i]);
    tail[i] = Select(z[i] < 0.f, 1.f - q, q);
  }
}

}  // namespace

MOE_SIMD_CLONES void GeluForward(const float* x, float* y, int64_t n) {
  kFusedClone ? ForwardLoop<Fused>(x, y, n) : ForwardLoop<Separate>(x, y, n);
}

MOE_SIMD_CLONES void GeluBackward(const float* x, const float* dy, float* dx, int64_t n) {
  kFusedClone ? BackwardLoop<Fused>(x, dy, dx, n) : BackwardLoop<Separate>(x, dy, dx, n);
}

MOE_SIMD_CLONES void GeluForwardWithDerivative(const float* x, float* y, float* dydx, int64_t n) {
  kFusedClone ? ForwardWithDerivativeLoop<Fused>(x, y, dydx, n)
              : ForwardWithDerivativeLoop<Separate>(x, y, dydx, n);
}

MOE_SIMD_CLONES void GeluBackwardFromDerivative(const float* dydx, const float* dy, float* dx,
                                                int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * dydx[i];
}

MOE_SIMD_CLONES void ScaleWithColumnSums(const float* factor, float* d, int64_t rows,
                                         int64_t cols, float* col_sum) {
  for (int64_t i = 0; i < rows; ++i) {
    const float* fi = factor + i * cols;
    float* di = d + i * cols;
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) {
      di[j] = di[j] * fi[j];
      col_sum[j] += di[j];
    }
  }
}

MOE_SIMD_CLONES void NormalTailAndPdf(const float* z, int64_t n, float* tail, float* pdf) {
  kFusedClone ? TailAndPdfLoop<Fused>(z, n, tail, pdf) : TailAndPdfLoop<Separate>(z, n, tail, pdf);
}

void GeluForwardWithDerivativeSeparateRounding(const float* x, float* y, float* dydx, int64_t n) {
  ForwardWithDerivativeLoop<Separate>(x, y, dydx, n);
}

void NormalTailAndPdfSeparateRounding(const float* z, int64_t n, float* tail, float* pdf) {
  TailAndPdfLoop<Separate>(z, n, tail, pdf);
}

}  // namespace moe
