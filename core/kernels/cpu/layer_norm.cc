#include "core/kernels/cpu/layer_norm.h"

#include <cmath>
#include <vector>

namespace moe {

void LayerNormForward(const float* x, const float* gamma, const float* beta, int64_t rows,
                      int64_t dim, float eps, float* y, float* mean, float* rstd) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    double s = 0;
    for (int64_t j = 0; j < dim; ++j) s += xr[j];
    const double mu = s / dim;
    // Two-pass variance: no cancellation when |mean| >> std.
    double ss = 0;
    for (int64_t j = 0; j < dim; ++j) {
      const double d = xr[j] - mu;
      ss += d * d;
    }
    const double inv = 1.0 / std::sqrt(ss / dim + eps);
    mean[r] = static_cast<float>(mu);
    rstd[r] = static_cast<float>(inv);
    float* yr = y + r * dim;
    for (int64_t j = 0; j < dim; ++j)
      yr[j] = static_cast<float>((xr[j] - mu) * inv) * gamma[j] + beta[j];
  }
}

void LayerNormBackward(const float* x, const float* dy, const float* gamma, const float* mean,
                       const float* rstd, int64_t rows, int64_t dim, float* dx, float* dgamma,
                       float* dbeta) {
  // With xhat = (x - mean) * rstd and g = dy * gamma:
  //   dx = rstd * (g - mean_j(g) - xhat * mean_j(g * xhat)).
  std::vector<double> dg(dim, 0.0), db(dim, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    const float* dyr = dy + r * dim;
    const double mu = mean[r], inv = rstd[r];
    double sum_g = 0, sum_gx = 0;
    for (int64_t j = 0; j < dim; ++j) {
      const double xhat = (xr[j] - mu) * inv;
      const double g = static_cast<double>(dyr[j]) * gamma[j];
      sum_g += g;
      sum_gx += g * xhat;
      dg[j] += dyr[j] * xhat;
      db[j] += dyr[j];
    }
    const double mg = sum_g / dim, mgx = sum_gx / dim;
    float* dxr = dx + r * dim;
    for (int64_t j = 0; j < dim; ++j) {
      const double xhat = (xr[j] - mu) * inv;
      dxr[j] = static_cast<float>(inv * (static_cast<double>(dyr[j]) * gamma[j] - mg - xhat * mgx));
    }
  }
  for (int64_t j = 0; j < dim; ++j) {
    dgamma[j] += static_cast<float>(dg[j]);
    dbeta[j] += static_cast<float>(db[j]);
  }
}

}  // namespace moe
