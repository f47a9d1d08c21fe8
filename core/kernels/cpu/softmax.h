// Row-wise softmax on host float arrays (attention probabilities). Named apart from the router's
// SoftmaxRows (models/moe/router_math.h) so that core does not depend on models.
#pragma once

#include <cstdint>

namespace moe {

// y[r, :] = softmax(x[r, :]) for [rows, cols], max subtracted, sum in double. y may alias x.
void SoftmaxForwardRows(const float* x, int64_t rows, int64_t cols, float* y);

// dx = y * (dy - sum_j y_j dy_j) per row, from Forward's output y. WRITES dx; dx may alias dy.
void SoftmaxBackwardRows(const float* y, const float* dy, int64_t rows, int64_t cols, float* dx);

}  // namespace moe
