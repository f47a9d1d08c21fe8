#include "core/kernels/cpu/softmax.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace moe {

void SoftmaxForwardRows(const float* x, int64_t rows, int64_t cols, float* y) {
  if (cols <= 0) return;
  // exp and the normalisation in double: the router's gates feed top-k decisions and gradient
  // checks, and float exp noise is visible there; rows are short, so the cost is small.
  thread_local std::vector<double> e;
  e.resize(cols);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    float mx = xr[0];
    for (int64_t j = 1; j < cols; ++j) mx = std::max(mx, xr[j]);
    double sum = 0;
    for (int64_t j = 0; j < cols; ++j) {
      e[j] = std::exp(static_cast<double>(xr[j]) - mx);
      sum += e[j];
    }
    const double inv = 1.0 / sum;
    for (int64_t j = 0; j < cols; ++j) yr[j] = static_cast<float>(e[j] * inv);
  }
}

void SoftmaxBackwardRows(const float* y, const float* dy, int64_t rows, int64_t cols, float* dx) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* yr = y + r * cols;
    const float* dyr = dy + r * cols;
    double dot = 0;
    for (int64_t j = 0; j < cols; ++j) dot += static_cast<double>(yr[j]) * dyr[j];
    const float d = static_cast<float>(dot);
    float* dxr = dx + r * cols;
    for (int64_t j = 0; j < cols; ++j) dxr[j] = yr[j] * (dyr[j] - d);
  }
}

}  // namespace moe
