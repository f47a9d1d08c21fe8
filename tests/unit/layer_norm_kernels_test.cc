// The host LayerNorm (core/kernels/cpu/layer_norm.h) sums several rows side by side; each row must
// keep its own order of operations, so the results are the row-by-row definition's bits whatever
// the row count, the block a row falls in, or aliasing. (Its gradients against finite differences:
// layers_gradcheck_test.)
#include "core/kernels/cpu/layer_norm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/rng.h"

namespace moe {
namespace {

std::vector<float> Normals(int64_t n, uint64_t key, float scale, float shift) {
  const CounterRng rng(key);
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = shift + scale * rng.Normal(i);
  return v;
}

// The definition, one row at a time, sums in double in index order.
void ForwardByRow(const float* x, const float* gamma, const float* beta, int64_t rows,
                  int64_t dim, float eps, float* y, float* mean, float* rstd) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    double s = 0;
    for (int64_t j = 0; j < dim; ++j) s += xr[j];
    const double mu = s / dim;
    double ss = 0;
    for (int64_t j = 0; j < dim; ++j) {
      const double d = xr[j] - mu;
      ss += d * d;
    }
    const double inv = 1.0 / std::sqrt(ss / dim + eps);
    mean[r] = static_cast<float>(mu);
    rstd[r] = static_cast<float>(inv);
    for (int64_t j = 0; j < dim; ++j)
      y[r * dim + j] = static_cast<float>((xr[j] - mu) * inv) * gamma[j] + beta[j];
  }
}

void BackwardByRow(const float* x, const float* dy, const float* gamma, const float* mean,
                   const float* rstd, int64_t rows, int64_t dim, float* dx, float* dgamma,
                   float* dbeta) {
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
    for (int64_t j = 0; j < dim; ++j) {
      const double xhat = (xr[j] - mu) * inv;
      dx[r * dim + j] =
          static_cast<float>(inv * (static_cast<double>(dyr[j]) * gamma[j] - mg - xhat * mgx));
    }
  }
  for (int64_t j = 0; j < dim; ++j) {
    dgamma[j] += static_cast<float>(dg[j]);
    dbeta[j] += static_cast<float>(db[j]);
  }
}

TEST(LayerNormKernels, BlocksOfRowsGiveTheRowByRowBits) {
  for (int64_t rows : {1, 3, 4, 5, 11, 64}) {
    for (int64_t dim : {1, 7, 64, 129}) {
      SCOPED_TRACE(::testing::Message() << "rows=" << rows << " dim=" << dim);
      const int64_t n = rows * dim;
      const std::vector<float> x = Normals(n, 1, 3.f, 5.f), dy = Normals(n, 2, 1.f, 0.f);
      const std::vector<float> gamma = Normals(dim, 3, 0.5f, 1.f), beta = Normals(dim, 4, 1.f, 0.f);
      const float eps = 1e-5f;
      std::vector<float> want_y(n), want_mean(rows), want_rstd(rows);
      ForwardByRow(x.data(), gamma.data(), beta.data(), rows, dim, eps, want_y.data(),
                   want_mean.data(), want_rstd.data());
      std::vector<float> y = x, mean(rows), rstd(rows);  // in place, as y may alias x
      LayerNormForward(y.data(), gamma.data(), beta.data(), rows, dim, eps, y.data(), mean.data(),
                       rstd.data());
      EXPECT_EQ(y, want_y);
      EXPECT_EQ(mean, want_mean);
      EXPECT_EQ(rstd, want_rstd);

      const std::vector<float> dgamma0 = Normals(dim, 5, 1.f, 0.f), dbeta0 = Normals(dim, 6, 1.f, 0.f);
      std::vector<float> want_dx(n), want_dgamma = dgamma0, want_dbeta = dbeta0;
      BackwardByRow(x.data(), dy.data(), gamma.data(), mean.data(), rstd.data(), rows, dim,
                    want_dx.data(), want_dgamma.data(), want_dbeta.data());
      std::vector<float> dx = dy, dgamma = dgamma0, dbeta = dbeta0;  // dx over dy
      LayerNormBackward(x.data(), dx.data(), gamma.data(), mean.data(), rstd.data(), rows, dim,
                        dx.data(), dgamma.data(), dbeta.data());
      EXPECT_EQ(dx, want_dx);
      EXPECT_EQ(dgamma, want_dgamma);
      EXPECT_EQ(dbeta, want_dbeta);
    }
  }
}

}  // namespace
}  // namespace moe
