// Each operation rounded once (no FMA contraction): the loops are compiled for several vector
// widths, and every width must give the baseline's bits.
#pragma GCC optimize("fp-contract=off")

#include "core/kernels/cpu/layer_norm.h"

#include <cmath>
#include <vector>

namespace moe {

namespace {

// Speed: each row's statistics are sums in double, one chain of dependent adds per row (its order
// is the definition, so it cannot be split). A row of 64 would stall on the add latency; kRows
// rows are therefore summed side by side, each still in index order: the bits do not change.
constexpr int kRows = 4;

// AVX-512, AVX2 and the baseline, picked once at load time by the CPU: the per-column loops run
// 8 or 4 doubles wide instead of SSE's 2.
#define MOE_LAYER_NORM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

template <int N>
MOE_LAYER_NORM_CLONES void ForwardRows(const float* x, const float* gamma, const float* beta,
                                       int64_t dim, float eps, float* y, float* mean,
                                       float* rstd) {
  double s[N] = {};
  for (int64_t j = 0; j < dim; ++j)
    for (int r = 0; r < N; ++r) s[r] += x[r * dim + j];
  double mu[N];
  for (int r = 0; r < N; ++r) mu[r] = s[r] / dim;
  // Two-pass variance: no cancellation when |mean| >> std.
  double ss[N] = {};
  for (int64_t j = 0; j < dim; ++j)
    for (int r = 0; r < N; ++r) {
      const double d = x[r * dim + j] - mu[r];
      ss[r] += d * d;
    }
  for (int r = 0; r < N; ++r) {
    const double inv = 1.0 / std::sqrt(ss[r] / dim + eps);
    mean[r] = static_cast<float>(mu[r]);
    rstd[r] = static_cast<float>(inv);
    const float* xr = x + r * dim;
    float* yr = y + r * dim;
    for (int64_t j = 0; j < dim; ++j)
      yr[j] = static_cast<float>((xr[j] - mu[r]) * inv) * gamma[j] + beta[j];
  }
}

// The row sums the backward needs, N rows side by side: sum_j g and sum_j g xhat, with
// g = dy * gamma and xhat = (x - mean) * rstd.
template <int N>
MOE_LAYER_NORM_CLONES void BackwardRowSums(const float* x, const float* dy, const float* gamma,
                                           const double* mu, const double* inv, int64_t dim,
                                           double* sum_g, double* sum_gx) {
  for (int r = 0; r < N; ++r) sum_g[r] = sum_gx[r] = 0;
  for (int64_t j = 0; j < dim; ++j)
    for (int r = 0; r < N; ++r) {
      const double xhat = (x[r * dim + j] - mu[r]) * inv[r];
      const double g = static_cast<double>(dy[r * dim + j]) * gamma[j];
      sum_g[r] += g;
      sum_gx[r] += g * xhat;
    }
}

// One row's column work, vectorised across columns: dg, db ([dim], double) accumulate the row
// (rows ascending for every column), and dx is written (it may alias dy: same index only).
MOE_LAYER_NORM_CLONES void BackwardRowColumns(const float* xr, const float* dyr,
                                              const float* gamma, double mu, double inv,
                                              double mg, double mgx, int64_t dim, float* dxr,
                                              double* dg, double* db) {
  for (int64_t j = 0; j < dim; ++j) {
    const double xhat = (xr[j] - mu) * inv;
    const float dyv = dyr[j];
    dg[j] += dyv * xhat;
    db[j] += dyv;
    dxr[j] = static_cast<float>(inv * (static_cast<double>(dyv) * gamma[j] - mg - xhat * mgx));
  }
}

template <int N>
void BackwardRows(const float* x, const float* dy, const float* gamma, const float* mean,
                  const float* rstd, int64_t dim, float* dx, double* dg, double* db) {
  double mu[N], inv[N], sum_g[N], sum_gx[N];
  for (int r = 0; r < N; ++r) {
    mu[r] = mean[r];
    inv[r] = rstd[r];
  }
  BackwardRowSums<N>(x, dy, gamma, mu, inv, dim, sum_g, sum_gx);
  for (int r = 0; r < N; ++r)
    BackwardRowColumns(x + r * dim, dy + r * dim, gamma, mu[r], inv[r], sum_g[r] / dim,
                       sum_gx[r] / dim, dim, dx + r * dim, dg, db);
}

}  // namespace

void LayerNormForward(const float* x, const float* gamma, const float* beta, int64_t rows,
                      int64_t dim, float eps, float* y, float* mean, float* rstd) {
  int64_t r = 0;
  for (; r + kRows <= rows; r += kRows)
    ForwardRows<kRows>(x + r * dim, gamma, beta, dim, eps, y + r * dim, mean + r, rstd + r);
  for (; r < rows; ++r)
    ForwardRows<1>(x + r * dim, gamma, beta, dim, eps, y + r * dim, mean + r, rstd + r);
}

void LayerNormBackward(const float* x, const float* dy, const float* gamma, const float* mean,
                       const float* rstd, int64_t rows, int64_t dim, float* dx, float* dgamma,
                       float* dbeta) {
  // With xhat = (x - mean) * rstd and g = dy * gamma:
  //   dx = rstd * (g - mean_j(g) - xhat * mean_j(g * xhat)).
  thread_local std::vector<double> dg, db;
  dg.assign(dim, 0.0);
  db.assign(dim, 0.0);
  int64_t r = 0;
  for (; r + kRows <= rows; r += kRows)
    BackwardRows<kRows>(x + r * dim, dy + r * dim, gamma, mean + r, rstd + r, dim, dx + r * dim,
                        dg.data(), db.data());
  for (; r < rows; ++r)
    BackwardRows<1>(x + r * dim, dy + r * dim, gamma, mean + r, rstd + r, dim, dx + r * dim,
                    dg.data(), db.data());
  for (int64_t j = 0; j < dim; ++j) {
    dgamma[j] += static_cast<float>(dg[j]);
    dbeta[j] += static_cast<float>(db[j]);
  }
}

}  // namespace moe
