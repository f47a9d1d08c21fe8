// The router's fast paths against the plain definitions: TopKRows' one-pass selection equals a
// full sort by (value descending, index ascending), exactly; the load loss's float z, 1 - Phi and
// phi (one vectorised pass) stay within the error bound derived from their float roundings.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "core/rng.h"
#include "models/moe/aux_losses.h"
#include "models/moe/router_math.h"
#include "models/moe/routing_rule.h"
#include "models/moe/slot_assignment.h"
#include "tests/unit/normal_tail_bounds.h"

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
  for (int E : {1, 2, 5, 8, 33, 70}) {  // 70: rows of many experts (long select chains)
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

// k = 2 takes blocks of 16 rows at once: rows with NaN or -inf inside such a block, and in the
// remainder, must still give the k-scan result (each scan takes the first unused entry that no
// later entry beats with a strict '>').
TEST(RouterFastPaths, Top2BlocksWithNaNAndInfinitiesKeepTheScanOrder) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (int E : {2, 3, 8, 20, 70}) {
    const int64_t n = 53;  // three blocks of 16 and a remainder of 5
    std::vector<float> p = TiedRows(n, E, 40 + E);
    for (int64_t t = 0; t < n; t += 3) p[t * E + (t % E)] = nan;      // NaN first, last, inside
    for (int64_t t = 1; t < n; t += 7)
      for (int j = 0; j < E; ++j) p[t * E + j] = j == 0 ? 1.f : -inf;  // one entry above -inf
    std::vector<int> expert(n * 2);
    std::vector<float> gate(n * 2);
    TopKRows(p.data(), n, E, 2, expert.data(), gate.data());
    for (int64_t t = 0; t < n; ++t) {
      const float* row = p.data() + t * E;
      std::vector<char> used(E, 0);
      for (int r = 0; r < 2; ++r) {
        int best = -1;
        for (int j = 0; j < E; ++j)
          if (!used[j] && (best < 0 || row[j] > row[best])) best = j;
        used[best] = 1;
        ASSERT_EQ(expert[t * 2 + r], best) << "E=" << E << " t=" << t << " r=" << r;
      }
    }
  }
}

// The BPR order by packed keys equals the stable sort's, with ties, both zeros, infinities and
// NaN among the gates, for k = 1 and 2 and group sizes around a sort's small-size cut-offs.
TEST(RouterFastPaths, BatchPrioritizedOrderByKeysEqualsStableSort) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int k : {1, 2}) {
    for (int64_t n : {0, 1, 2, 15, 16, 17, 128, 1000}) {
      std::vector<float> gate = TiedRows(n, k, 300 + n);
      for (int64_t t = 0; t < n; t += 5) gate[t * k] = nan;
      for (int64_t t = 2; t < n; t += 11) gate[t * k] = 1e-3f * static_cast<float>(t);
      EXPECT_EQ(BatchPrioritizedOrderByKeys(gate.data(), n, k),
                BatchPrioritizedOrder(gate.data(), n, k))
          << "k=" << k << " n=" << n;
    }
  }
}

// Softmax-like gates (distinct values in (0, 1], every key byte in play) and negative gates:
// the radix passes that are not skipped must keep the order, and keep it stable.
TEST(RouterFastPaths, BatchPrioritizedOrderByKeysOnDistinctGates) {
  for (int64_t n : {128, 4096}) {
    const CounterRng rng(900 + n);
    std::vector<float> gate(n * 2);
    for (int64_t i = 0; i < n * 2; ++i) gate[i] = rng.Uniform(i);
    for (int64_t t = 3; t < n; t += 7) gate[t * 2] = -gate[t * 2];
    for (int64_t t = 1; t < n; t += 13) gate[t * 2] = gate[(t - 1) * 2];  // some exact ties
    EXPECT_EQ(BatchPrioritizedOrderByKeys(gate.data(), n, 2),
              BatchPrioritizedOrder(gate.data(), n, 2))
        << "n=" << n;
  }
}

// The load loss as aux_losses.h defines it, in double, erfc and exp for every pair. Also returns
// z and dL/dload for the error bound.
struct LoadLossRef {
  double loss;
  std::vector<double> grad, z, load, dload;
};

LoadLossRef LoadLossReference(const std::vector<float>& h, const std::vector<float>& noisy,
                              int64_t n, int E, int k, float sigma) {
  std::vector<int> idx(n * k);
  std::vector<float> val(n * k);
  TopKRows(noisy.data(), n, E, k, idx.data(), val.data());
  LoadLossRef r;
  r.load.assign(E, 0.0);
  r.z.resize(n * E);
  for (int64_t t = 0; t < n; ++t)
    for (int e = 0; e < E; ++e) {
      const double threshold = noisy[t * E + idx[t * k + k - 1]];
      r.z[t * E + e] = (threshold - static_cast<double>(h[t * E + e])) / sigma;
      r.load[e] += NormalCdf(-r.z[t * E + e]);
    }
  for (int e = 0; e < E; ++e) r.load[e] /= static_cast<double>(n);
  r.dload.resize(E);
  r.loss = CvSquared(r.load.data(), E, r.dload.data());
  r.grad.assign(n * E, 0.0);
  const double c = 1.0 / (static_cast<double>(sigma) * n);
  for (int64_t t = 0; t < n; ++t) {
    double to_threshold = 0;
    for (int e = 0; e < E; ++e) {
      r.grad[t * E + e] = c * r.dload[e] * NormalPdf(r.z[t * E + e]);
      to_threshold += r.grad[t * E + e];
    }
    r.grad[t * E + idx[t * k + k - 1]] -= to_threshold;
  }
  return r;
}

// Error model (u = 2^-24, float rounding): z = (t - h) / sigma rounds twice (2u relative), which
// moves the tail by phi(z) |z| 2u and phi's exp argument by z^2 2u; the kernel then adds its own
// error at that float z (tests/unit/normal_tail_bounds.h: the tail's TailAbsolute, phi's
// PdfRelative, each including the values beyond |z| = 12).
namespace ntb = normal_tail_bounds;
using ntb::kU;

// First-order bound on |loss - ref.loss| from the per-load bounds: sum_e |dL/dload_e| dload_err_e.
// Doubled for the neglected second-order terms (products of two relative errors, each < 1e-5).
double LossBound(const LoadLossRef& r, int64_t n, int E, std::vector<double>* load_err) {
  load_err->assign(E, 0.0);
  for (int64_t t = 0; t < n; ++t)
    for (int e = 0; e < E; ++e) {
      const double z = r.z[t * E + e];
      (*load_err)[e] += (NormalPdf(z) * std::abs(z) * 2 * kU + ntb::TailAbsolute(z)) / n;
    }
  double b = 0;
  for (int e = 0; e < E; ++e) b += std::abs(r.dload[e]) * (*load_err)[e];
  return 2 * b;
}

// |d(dL/dload_e)| from the load errors: dL/dv_e = 2 / (E m^2) ((v_e - m) - var / m), each term's
// first-order change summed with absolute values, doubled as above.
std::vector<double> DloadBound(const LoadLossRef& r, int E, const std::vector<double>& verr) {
  double m = 0, dm = 0, var = 0, mean_abs_dev = 0;
  for (int e = 0; e < E; ++e) m += r.load[e] / E, dm += verr[e] / E;
  for (int e = 0; e < E; ++e) {
    var += (r.load[e] - m) * (r.load[e] - m) / E;
    mean_abs_dev += std::abs(r.load[e] - m) / E;
  }
  const double dvar = 2 * mean_abs_dev * (2 * dm + *std::max_element(verr.begin(), verr.end()));
  const double d_var_over_m = dvar / m + var * dm / (m * m);
  std::vector<double> b(E);
  for (int e = 0; e < E; ++e)
    b[e] = 2 * (2 / (E * m * m) * (verr[e] + dm + d_var_over_m) +
                std::abs(r.dload[e]) * 2 * dm / m);
  return b;
}

// Per element: c (|d dload_e| phi + |dload_e| (phi 2 z^2 u + pdf error)), and for the threshold
// element the sum of its row's bounds as well (it receives minus the row's sum).
std::vector<double> GradBound(const LoadLossRef& r, int64_t n, int E, int k, float sigma,
                              const std::vector<float>& noisy, const std::vector<double>& ddl) {
  std::vector<int> idx(n * k);
  std::vector<float> val(n * k);
  TopKRows(noisy.data(), n, E, k, idx.data(), val.data());
  const double c = 1.0 / (static_cast<double>(sigma) * n);
  std::vector<double> b(n * E);
  for (int64_t t = 0; t < n; ++t) {
    double row = 0;
    for (int e = 0; e < E; ++e) {
      const double z = r.z[t * E + e], phi = NormalPdf(z);
      const double phi_err = phi * 2 * z * z * kU + ntb::PdfAbsolute(z);
      b[t * E + e] = c * (ddl[e] * phi + std::abs(r.dload[e]) * phi_err);
      row += b[t * E + e];
    }
    b[t * E + idx[t * k + k - 1]] += row;
  }
  return b;
}

TEST(RouterFastPaths, LoadLossInFloatWithinItsDerivedBound) {
  const int64_t n = 48;
  const int E = 32, k = 2;
  const float sigma = 1.f / E;
  const CounterRng rng(99);
  std::vector<float> h(n * E), noisy(n * E);
  for (int64_t i = 0; i < n * E; ++i) {
    h[i] = 0.3f * rng.Normal(i);  // spread over ~10 sigma: tails, centre and far tail all met
    noisy[i] = h[i] + sigma * rng.Normal(i, 1);
  }
  const LoadLossRef want = LoadLossReference(h, noisy, n, E, k, sigma);
  std::vector<float> grad(n * E, 0.f);
  const double got = LoadLoss(h.data(), noisy.data(), n, E, k, sigma, 1.f, grad.data());
  std::vector<double> load_err;
  const double loss_bound = LossBound(want, n, E, &load_err);
  EXPECT_NEAR(got, want.loss, loss_bound);
  EXPECT_GT(std::abs(got - want.loss), 0.0);  // float really differs: the comparison is live
  const std::vector<double> gb =
      GradBound(want, n, E, k, sigma, noisy, DloadBound(want, E, load_err));
  // The gradient is returned in float: half an ulp of it on top.
  for (int64_t i = 0; i < n * E; ++i)
    ASSERT_NEAR(grad[i], want.grad[i], gb[i] + std::abs(want.grad[i]) * kU) << i;
}

}  // namespace
}  // namespace moe
