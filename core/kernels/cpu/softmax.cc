// Plain float/double arithmetic, each operation rounded once (no FMA contraction): every loop is
// compiled for several vector widths (GCC function multi-versioning, picked once at load time by
// the CPU), and every width must give the baseline's bits. exp_f32::Exp is the device's own
// definition of exp (core/kernels/cpu/exp_f32.h).
#pragma GCC optimize("fp-contract=off")

#include "core/kernels/cpu/softmax.h"

#include <algorithm>

#include "core/kernels/cpu/exp_f32.h"

#define MOE_SOFTMAX_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

namespace moe {

namespace {

// The forward's three passes, each a short vectorisable loop over contiguous memory: attention
// rows (one entry per token: 16 for a 28x28 image in 7x7 patches) and router rows (E = 8 is one
// vector) are short, and a loop that is one chain per row stalls on its own latency. (A scalar
// double exp per entry, used here before, was 4% of a vmoe_tiny training step.)

// y = x - max(x) per row (y may alias x). The max in 8 interleaved partial maxima: its VALUE does
// not depend on the order, and a row holding NaN comes out all NaN either way (the NaN reaches
// the sum), so the probabilities equal those of the sequential max.
MOE_SOFTMAX_CLONES void SubtractRowMax(const float* x, int64_t n, int64_t E, float* y) {
  constexpr int kParts = 8;
  for (int64_t t = 0; t < n; ++t) {
    const float* xr = x + t * E;
    float part[kParts];
    for (int j = 0; j < kParts; ++j) part[j] = xr[0];
    int64_t e = 0;
    for (; e + kParts <= E; e += kParts)
      for (int j = 0; j < kParts; ++j) part[j] = std::max(part[j], xr[e + j]);
    for (; e < E; ++e) part[0] = std::max(part[0], xr[e]);
    const float mx = std::max(std::max(std::max(part[0], part[1]), std::max(part[2], part[3])),
                              std::max(std::max(part[4], part[5]), std::max(part[6], part[7])));
    for (int64_t j = 0; j < E; ++j) y[t * E + j] = xr[j] - mx;
  }
}

// x[i] -> exp_f32::Exp(x[i]) over the whole array (Exp is basic float operations only).
MOE_SOFTMAX_CLONES void ExpInPlace(float* x, int64_t count) {
  for (int64_t i = 0; i < count; ++i) x[i] = exp_f32::Exp(x[i]);
}

// y /= sum(y) per row, the sum in double in index order and the product in double. Four rows at
// a time: their four sums are independent chains that the CPU runs side by side.
MOE_SOFTMAX_CLONES void NormaliseRows(float* y, int64_t n, int64_t E) {
  constexpr int kRows = 4;
  int64_t t = 0;
  for (; t + kRows <= n; t += kRows) {
    float* b = y + t * E;
    double sum[kRows] = {};
    for (int64_t j = 0; j < E; ++j)
      for (int r = 0; r < kRows; ++r) sum[r] += b[r * E + j];
    for (int r = 0; r < kRows; ++r) {
      const double inv = 1.0 / sum[r];
      for (int64_t j = 0; j < E; ++j) b[r * E + j] = static_cast<float>(b[r * E + j] * inv);
    }
  }
  for (; t < n; ++t) {
    float* b = y + t * E;
    double sum = 0;
    for (int64_t j = 0; j < E; ++j) sum += b[j];
    const double inv = 1.0 / sum;
    for (int64_t j = 0; j < E; ++j) b[j] = static_cast<float>(b[j] * inv);
  }
}

}  // namespace

void SoftmaxForwardRows(const float* x, int64_t rows, int64_t cols, float* y) {
  if (rows <= 0 || cols <= 0) return;
  SubtractRowMax(x, rows, cols, y);
  ExpInPlace(y, rows * cols);
  NormaliseRows(y, rows, cols);
}

namespace {

// Four rows at a time: their double dot products (each in index order, as the CUDA kernel sums
// it) are independent chains that the CPU runs side by side, where one short row's chain would
// stall on its own add latency. Each row keeps its order of operations: the bits do not change.
constexpr int kBackwardRows = 4;

MOE_SOFTMAX_CLONES void SoftmaxBackwardBlock(
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
