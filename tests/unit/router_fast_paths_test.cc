// The router's fast paths give exactly what the plain definitions give: TopKRows' one-pass
// selection equals a full sort by (value descending, index ascending), and the load loss's
// far-tail shortcut (no erfc / exp beyond |z| = 40) changes no bit of the value or the gradient.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "core/rng.h"
#include "models/moe/aux_losses.h"
#include "models/moe/router_math.h"

namespace moe {
namespace {

// Rows full of ties: values from a small set, with both zeros and both infinities.
std::vector<float> TiedRows(int64_t n, int E, uint64_t key) {
  const float kValues[] = {-std::numeric_limits<float>::infinity(), -1.5f, -0.f, 0.f, 0.25f,
                           0.25f, 3.f, std::numeric_limits<float>::infinity()};
  const CounterRng rng(key);
  std::vector<float> v(n * E);
  for (int64_t i = 0; i < n * E; ++i)
    v[i] = kValues[static_cast<int>(rng.Uniform(i) * 8.f) & 7];
  return v;
}

TEST(RouterFastPaths, TopKRowsEqualsStableSortDescending) {
  for (int E : {1, 2, 5, 8, 33}) {
    const int64_t n = 64;
    const auto p = TiedRows(n, E, 17 + E);
    for (int k = 1; k <= E; ++k) {
      std::vector<int> expert(n * k);
      std::vector<float> gate(n * k);
      TopKRows(p.data(), n, E, k, expert.data(), gate.data());
      for (int64_t t = 0; t < n; ++t) {
        std::vector<int> order(E);
        std::iota(order.begin(), order.end(), 0);
        const float* row = p.data() + t * E;
        std::stable_sort(order.begin(), order.end(),
                         [row](int a, int b) { return row[a] > row[b]; });
        for (int r = 0; r < k; ++r) {
          ASSERT_EQ(expert[t * k + r], order[r]) << "E=" << E << " k=" << k << " t=" << t;
          ASSERT_EQ(gate[t * k + r], row[order[r]]);
        }
      }
    }
  }
}

// A row holding NaN keeps the k-scan result: distinct ids; a NaN in the first place is taken
// first (nothing compares greater than it), a later NaN never.
TEST(RouterFastPaths, TopKRowsWithNaNKeepsTheScanOrder) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> p = {nan, 2.f, 1.f, 3.f, /*row 2*/ 1.f, nan, 5.f, 2.f};
  std::vector<int> expert(2 * 2);
  std::vector<float> gate(2 * 2);
  TopKRows(p.data(), 2, 4, 2, expert.data(), gate.data());
  EXPECT_EQ(expert[0], 0);
  EXPECT_EQ(expert[1], 3);
  EXPECT_EQ(expert[2], 6 - 4);
  EXPECT_EQ(expert[3], 7 - 4);
}

// The load loss as aux_losses.h defines it, erfc and exp for every pair, in LoadLoss's order of
// operations (sum, then divide; the gradient's constant c first).
double LoadLossReference(const std::vector<float>& h, const std::vector<float>& noisy, int64_t n,
                         int E, int k, float sigma, std::vector<double>* grad) {
  std::vector<int> idx(n * k);
  std::vector<float> val(n * k);
  TopKRows(noisy.data(), n, E, k, idx.data(), val.data());
  std::vector<double> load(E, 0.0), z(n * E);
  for (int64_t t = 0; t < n; ++t)
    for (int e = 0; e < E; ++e) {
      const double threshold = noisy[t * E + idx[t * k + k - 1]];
      z[t * E + e] = (threshold - static_cast<double>(h[t * E + e])) / sigma;
      load[e] += NormalCdf(-z[t * E + e]);
    }
  for (int e = 0; e < E; ++e) load[e] /= static_cast<double>(n);
  std::vector<double> dload(E);
  const double loss = CvSquared(load.data(), E, dload.data());
  grad->assign(n * E, 0.0);
  const double c = 1.0 / (static_cast<double>(sigma) * n);
  for (int64_t t = 0; t < n; ++t) {
    double to_threshold = 0;
    for (int e = 0; e < E; ++e) {
      (*grad)[t * E + e] = c * dload[e] * NormalPdf(z[t * E + e]);
      to_threshold += (*grad)[t * E + e];
    }
    (*grad)[t * E + idx[t * k + k - 1]] -= to_threshold;
  }
  return loss;
}

TEST(RouterFastPaths, LoadLossFarTailChangesNoBit) {
  const int64_t n = 48;
  const int E = 32, k = 2;
  const float sigma = 1.f / E;
  const CounterRng rng(99);
  std::vector<float> h(n * E), noisy(n * E);
  int64_t far = 0, near = 0;
  for (int64_t i = 0; i < n * E; ++i) {
    h[i] = 3.f * rng.Normal(i);  // spread over ~100 sigma: most pairs in the far tail
    noisy[i] = h[i] + sigma * rng.Normal(i, 1);
  }
  std::vector<double> want_grad;
  const double want = LoadLossReference(h, noisy, n, E, k, sigma, &want_grad);
  std::vector<float> grad(n * E, 0.f);
  const double got = LoadLoss(h.data(), noisy.data(), n, E, k, sigma, 1.f, grad.data());
  EXPECT_EQ(got, want);
  for (int64_t i = 0; i < n * E; ++i) {
    ASSERT_EQ(grad[i], static_cast<float>(want_grad[i])) << i;
    (want_grad[i] == 0.0 ? far : near) += 1;
  }
  EXPECT_GT(far, n * E / 2);  // the shortcut was taken ...
  EXPECT_GT(near, n);         // ... and the exact path too
}

}  // namespace
}  // namespace moe
