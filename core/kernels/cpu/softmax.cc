// Plain float/double arithmetic, each operation rounded once (no FMA contraction): the backward's
// lanes are compiled for several vector widths, and every width must give the baseline's bits.
#pragma GCC optimize("fp-contract=off")

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

namespace {

// Four rows at a time: their double dot products (each in index order, as the CUDA kernel sums
// it) are independent chains that the CPU runs side by side, where one short row's chain would
// stall on its own add latency. Each row keeps its order of operations: the bits do not change.
constexpr int kBackwardRows = 4;

__attribute__((target_clones("avx512f", "avx2", "default"))) void SoftmaxBackwardBlock(
    const float* y, const float* dy, int rows, int64_t cols, float* dx) {
  double dot[kBackwardRows] = {};
  if (rows == kBackwardRows) {
    for (int64_t j = 0; j < cols; ++j)
      for (int r = 0; r < kBackwardRows; ++r)
        dot[r] += static_cast<double>(y[r * cols + j]) * dy[r * cols + j];
  } else {
    for (int r = 0; r < rows; ++r)
      for (int64_t j = 0; j < cols; ++j)
        dot[r] += static_cast<double>(y[r * cols + j]) * dy[r * cols + j];
  }
  for (int r = 0; r < rows; ++r) {
    const float d = static_cast<float>(dot[r]);
    for (int64_t j = 0; j < cols; ++j)
      dx[r * cols + j] = y[r * cols + j] * (dy[r * cols + j] - d);
  }
}

}  // namespace

void SoftmaxBackwardRows(const float* y, const float* dy, int64_t rows, int64_t cols, float* dx) {
  for (int64_t r = 0; r < rows; r += kBackwardRows) {
    const int block = static_cast<int>(std::min<int64_t>(kBackwardRows, rows - r));
    SoftmaxBackwardBlock(y + r * cols, dy + r * cols, block, cols, dx + r * cols);
  }
}

}  // namespace moe
