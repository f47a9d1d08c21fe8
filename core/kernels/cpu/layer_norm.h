// Row-wise LayerNorm on host float arrays: y = (x - mean) * rstd * gamma + beta over the last
// dimension, rstd = 1 / sqrt(var + eps) with the biased (1/dim) variance, as in PyTorch and flax.
#pragma once

#include <cstdint>

namespace moe {

// x, y: [rows, dim]; gamma, beta: [dim]. Writes y and the per-row statistics mean, rstd ([rows])
// that the backward needs. Statistics are accumulated in double. y may alias x.
void LayerNormForward(const float* x, const float* gamma, const float* beta, int64_t rows,
                      int64_t dim, float eps, float* y, float* mean, float* rstd);

// Given Forward's x, mean, rstd and dy: WRITES dx and ACCUMULATES dgamma, dbeta ([dim]).
// dx may alias dy (not x).
void LayerNormBackward(const float* x, const float* dy, const float* gamma, const float* mean,
                       const float* rstd, int64_t rows, int64_t dim, float* dx, float* dgamma,
                       float* dbeta);

}  // namespace moe
