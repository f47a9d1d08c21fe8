// Exact (erf) GELU on host float arrays, shared by the dense Gelu layer and the MoE experts.
//   y  = x * Phi(x) = 0.5 * x * erfc(-x / sqrt(2))
//   dx = dy * (Phi(x) + x * phi(x)),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
// Phi comes from the upper tail Q(|x|) (Phi(x) = Q(-x) for x < 0, 1 - Q(x) otherwise), so that
// negative x keeps its relative accuracy, as erfc(-x / sqrt 2) does in the CUDA kernels
// (core/kernels/cuda). The tail and phi are gelu.cc's own branch-free float code: one shared exp
// and a rational Mills ratio, every operation rounded once (a multiply-add is one fused operation
// on CPUs with FMA, two on older ones), so on one machine an element gets the same bits whatever
// the vector width and wherever it sits in a call. Error bounds, derived in
// gelu.cc and held by tests/unit/gelu_kernels_test.cc: phi within (x^2 / 2 + 7) u relative and
// Q(|x|) within (x^2 / 2 + 11) u (u = 2^-24; the x^2 / 2 is the rounding of exp's argument,
// which any float implementation shares).
#pragma once

#include <cstdint>

namespace moe {

// The plain forms: y[i] = gelu(x[i]) for i < n (x and y may alias), and the backward from x. No
// host layer calls them now (the layers keep the derivative, below); they are the definitions the
// dense-sweep bounds in tests/unit/gelu_kernels_test.cc check, and the split forms below must
// reproduce their bits.
void GeluForward(const float* x, float* y, int64_t n);
// dx[i] = dy[i] * gelu'(x[i]) (written, not accumulated). dx may alias dy (not x).
void GeluBackward(const float* x, const float* dy, float* dx, int64_t n);

// GeluForward that also writes the derivative, dydx[i] = gelu'(x[i]), by the same operations as
// GeluBackward's factor (so dy * dydx[i] is GeluBackward's dx bit for bit). A layer that keeps
// dydx instead of x needs no second evaluation of the tail in its backward (the experts do this:
// models/moe/expert_compute_cpu.cc). y and dydx may alias x (each element is read first).
void GeluForwardWithDerivative(const float* x, float* y, float* dydx, int64_t n);

// dx[i] = dy[i] * dydx[i], with dydx from GeluForwardWithDerivative: GeluBackward's dx bit for bit.
// dx may alias dy.
void GeluBackwardFromDerivative(const float* dydx, const float* dy, float* dx, int64_t n);

// The backward's product over a [rows, cols] block, in place: d[i, j] *= factor[i, j], with the
// column sums of the result added to col_sum (a bias gradient) in the same pass, rows in order.
// With factor = GeluForwardWithDerivative's dydx, bit for bit GeluBackward followed by a separate
// loop over the rows.
void ScaleWithColumnSums(const float* factor, float* d, int64_t rows, int64_t cols,
                         float* col_sum);

// The standard normal's upper tail and density that GELU is made of, vectorised the same way (the
// router's load loss reads them for every (row, expert) pair):
//   tail[i] = 1 - Phi(z[i]) = 0.5 erfc(z[i] / sqrt(2)),  pdf[i] = exp(-z[i]^2 / 2) / sqrt(2 pi).
// Within the bounds above for |z| <= 12 (for z < 0, 1 - Q(|z|) rounds once more); beyond, the
// values at |z| = 12 (absolute errors below 1.8e-33 and 5.4e-32). NaN in z gives NaN. pdf may be
// nullptr (then only the tail is written).
void NormalTailAndPdf(const float* z, int64_t n, float* tail, float* pdf);

// The baseline clone's arithmetic (multiply-adds rounded twice; gelu.cc explains when a CPU runs
// it), callable on any CPU so that the tests hold it to the same bounds where the CPU picks a
// fused clone. Not for the layers.
void GeluForwardWithDerivativeSeparateRounding(const float* x, float* y, float* dydx, int64_t n);
void NormalTailAndPdfSeparateRounding(const float* z, int64_t n, float* tail, float* pdf);

}  // namespace moe
