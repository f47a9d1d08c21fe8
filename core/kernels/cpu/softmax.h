// Row-wise softmax on host float arrays: the attention probabilities, and the router's through
// SoftmaxRows (models/moe/router_math.h, which adds its checks). exp in float by exp_f32::Exp (the
// device's definition, within 2 ulps), the sum in double in index order, y = float(e * (1 / sum))
// in double: the same bits at every vector width. The router's CUDA kernel repeats these
// operations in this order (bit for bit); the attention's sums its row in warp order (within
// rounding).
#pragma once

#include <cstdint>

namespace moe {

// y[r, :] = softmax(x[r, :]) for [rows, cols], max subtracted. y may alias x.
void SoftmaxForwardRows(const float* x, int64_t rows, int64_t cols, float* y);

// dx = y * (dy - sum_j y_j dy_j) per row, from Forward's output y. WRITES dx; dx may alias dy.
void SoftmaxBackwardRows(const float* y, const float* dy, int64_t rows, int64_t cols, float* dx);

}  // namespace moe
