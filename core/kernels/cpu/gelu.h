// Exact (erf) GELU on host float arrays, shared by the dense Gelu layer and the MoE experts.
//   y  = x * Phi(x) = 0.5 * x * erfc(-x / sqrt(2))
//   dx = dy * (Phi(x) + x * phi(x)),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
// erfc(-x/sqrt2) rather than 1 + erf(x/sqrt2): for negative x the latter cancels and loses
// relative accuracy; this is the same formula as the CUDA kernels (core/kernels/cuda).
#pragma once

#include <cstdint>

namespace moe {

// y[i] = gelu(x[i]) for i < n. x and y may alias.
void GeluForward(const float* x, float* y, int64_t n);
// dx[i] = dy[i] * gelu'(x[i]) (written, not accumulated). dx may alias dy (not x).
void GeluBackward(const float* x, const float* dy, float* dx, int64_t n);

// GeluBackward over a [rows, cols] block, in place on d, with the column sums of the result added
// to col_sum (a bias gradient) in the same pass: col_sum[j] += sum_i d[i, j], rows in order (the
// order of a separate loop over the rows; the elements agree with GeluBackward's within the few
// ulps by which libmvec's vector erfc/exp and libm's scalar ones, used in loop remainders, differ).
void GeluBackwardWithColumnSums(const float* x, float* d, int64_t rows, int64_t cols,
                                float* col_sum);

// The standard normal's upper tail and density that GELU is made of, vectorised the same way (the
// router's load loss reads them for every (row, expert) pair):
//   tail[i] = 1 - Phi(z[i]) = 0.5 erfc(z[i] / sqrt(2)),  pdf[i] = exp(-z[i]^2 / 2) / sqrt(2 pi).
// Float erfc/exp from libmvec, each within a few ulps (2.6e-7 relative measured against the
// scalar functions, see gelu.cc) for |z| <= 12; beyond, the limits 0 or 1 and 0 (absolute errors
// below 1.8e-33 and 5.4e-32). NaN in z gives unspecified values (fast-math). pdf may be nullptr
// (then only the tail is computed).
void NormalTailAndPdf(const float* z, int64_t n, float* tail, float* pdf);

}  // namespace moe
