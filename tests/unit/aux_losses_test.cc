// Auxiliary losses (models/moe/aux_losses) and the softmax backward: a hand-computed load loss,
// the importance loss's independence from the noise, and finite-difference checks of every
// gradient. (Cases 4-6 of models/moe/README.md are in routing_cases_test.cc.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/rng.h"
#include "models/moe/aux_losses.h"
#include "models/moe/router_math.h"

namespace moe {
namespace {

std::vector<float> RandomVec(int64_t size, uint64_t key, float scale) {
  CounterRng rng(key);
  std::vector<float> v(size);
  for (int64_t i = 0; i < size; ++i) v[i] = scale * rng.Normal(i);
  return v;
}

// Central differences of f at x (float inputs, double objective). The divisor is the actual
// float difference x+ - x-, so the representation error of the step does not count. Fails when
// |analytic - numeric| > rel_tol * max(|analytic|, |numeric|, abs_floor * max_i |analytic_i|).
void ExpectGradMatchesFiniteDifferences(const std::string& what, std::vector<float> x,
                                        const std::vector<float>& analytic,
                                        const std::function<double(const std::vector<float>&)>& f,
                                        float step, double rel_tol = 2e-3,
                                        double abs_floor = 1e-3) {
  ASSERT_EQ(x.size(), analytic.size());
  double gmax = 0;
  for (float a : analytic) gmax = std::max(gmax, std::abs(static_cast<double>(a)));
  ASSERT_GT(gmax, 0) << what << ": the analytic gradient is all zero";
  int failures = 0;
  for (size_t i = 0; i < x.size() && failures < 5; ++i) {
    const float saved = x[i];
    x[i] = saved + step;
    const float hi = x[i];
    const double up = f(x);
    x[i] = saved - step;
    const float lo = x[i];
    const double down = f(x);
    x[i] = saved;
    const double numeric = (up - down) / (static_cast<double>(hi) - lo);
    const double a = analytic[i];
    const double denom = std::max({std::abs(a), std::abs(numeric), abs_floor * gmax});
    if (std::abs(a - numeric) / denom > rel_tol) {
      ++failures;
      ADD_FAILURE() << what << "[" << i << "]: analytic " << a << " vs numeric " << numeric;
    }
  }
}

// Runs `accumulate(grad)` on a buffer pre-filled with `base`, checks it only ADDED to it, and
// returns (grad - base) / scale.
std::vector<float> AccumulatedGrad(int64_t size, float scale,
                                   const std::function<void(float*)>& accumulate) {
  const std::vector<float> base = RandomVec(size, 999, 3.f);
  std::vector<float> g = base;
  accumulate(g.data());
  for (int64_t i = 0; i < size; ++i) g[i] = (g[i] - base[i]) / scale;
  return g;
}

// ---------------------------------------------------------------------------------------------
// Load loss by hand. n = 2 tokens, E = 2 experts, k = 1, sigma = 0.5. Q(z) = 1 - Phi(z).
//   token 0: clean h = [0.5, 0],  noisy = [0.5, 0]    -> top-1 noisy is e0, t = 0.5
//            z = (t - h) / sigma = [0, 1]             -> p = [Q(0), Q(1)]  = [0.5, 0.158655]
//   token 1: clean h = [0, 0],    noisy = [0, 0.25]   -> top-1 noisy is e1, t = 0.25
//            z = [0.5, 0.5]                           -> p = [Q(.5), Q(.5)] = [0.308538, 0.308538]
//   load = mean over tokens = [(0.5 + 0.308538)/2, (0.158655 + 0.308538)/2]
//        = [0.404269, 0.233596];  mean m = 0.318933
//   population var = ((0.404269 - m)^2 + (0.233596 - m)^2) / 2 = 0.085336^2 = 0.0072823
//   L = var / m^2 = 0.0072823 / 0.1017183 = 0.071593
TEST(LoadLoss, MatchesHandComputedValue) {
  const std::vector<float> clean = {0.5f, 0.f, 0.f, 0.f};
  const std::vector<float> noisy = {0.5f, 0.f, 0.f, 0.25f};
  const auto Q = [](double z) { return 0.5 * std::erfc(z / std::sqrt(2.0)); };
  const double load0 = (Q(0) + Q(0.5)) / 2, load1 = (Q(1) + Q(0.5)) / 2;
  const double m = (load0 + load1) / 2;
  const double var = ((load0 - m) * (load0 - m) + (load1 - m) * (load1 - m)) / 2;
  const double expected = var / (m * m);
  EXPECT_NEAR(expected, 0.071593, 1e-6);  // the arithmetic above
  EXPECT_NEAR(LoadLoss(clean.data(), noisy.data(), 2, 2, 1, 0.5f, 1.f, nullptr), expected, 1e-9);
}

// k-th largest, not the largest: against a brute-force reference with k = 2, E = 4.
TEST(LoadLoss, ThresholdIsKthLargestNoisyLogit) {
  const int64_t n = 6;
  const int E = 4, k = 2;
  const float sigma = 1.f / E;
  const auto clean = RandomVec(n * E, 1, 1.f);
  auto noisy = clean;
  const auto eps = RandomVec(n * E, 2, sigma);
  for (int64_t i = 0; i < n * E; ++i) noisy[i] += eps[i];
  std::vector<double> load(E, 0);
  for (int64_t t = 0; t < n; ++t) {
    std::vector<float> row(noisy.begin() + t * E, noisy.begin() + (t + 1) * E);
    std::sort(row.begin(), row.end(), std::greater<float>());
    const double thr = row[k - 1];
    for (int e = 0; e < E; ++e)
      load[e] += (1 - NormalCdf((thr - clean[t * E + e]) / sigma)) / n;
  }
  const double expected = CvSquared(load.data(), E, nullptr);
  EXPECT_NEAR(LoadLoss(clean.data(), noisy.data(), n, E, k, sigma, 1.f, nullptr), expected, 1e-9);
  // And it differs from the k = 1 loss, so the test can tell the two apart.
  EXPECT_GT(std::abs(LoadLoss(clean.data(), noisy.data(), n, E, 1, sigma, 1.f, nullptr) - expected),
            1e-4);
}

TEST(NormalHelpers, KnownValues) {
  EXPECT_DOUBLE_EQ(NormalCdf(0), 0.5);
  EXPECT_NEAR(NormalCdf(1), 0.841344746068543, 1e-12);
  EXPECT_NEAR(NormalCdf(-1.959963984540054), 0.025, 1e-12);
  EXPECT_NEAR(NormalPdf(0), 0.398942280401433, 1e-12);
  EXPECT_NEAR(NormalPdf(1), 0.241970724519143, 1e-12);
}

// ---------------------------------------------------------------------------------------------
// Importance loss: computed on the clean probabilities, so any noise draw gives the same value,
// although the noisy probabilities (and their importance) do change.
TEST(ImportanceLoss, IdenticalUnderAnyNoiseDraw) {
  const int64_t n = 32;
  const int E = 8;
  const auto clean = RandomVec(n * E, 7, 1.f);
  std::vector<float> probs_clean(n * E);
  SoftmaxRows(clean.data(), n, E, probs_clean.data());
  const double reference = ImportanceLoss(probs_clean.data(), n, E, 1.f, nullptr);
  EXPECT_GT(reference, 0);
  bool noisy_importance_differs = false;
  for (uint64_t draw = 0; draw < 5; ++draw) {
    const auto eps = RandomVec(n * E, 100 + draw, 1.f / E);  // V-MoE noise N(0, (1/E)^2)
    std::vector<float> noisy(n * E), probs_noisy(n * E), recomputed(n * E);
    for (int64_t i = 0; i < n * E; ++i) noisy[i] = clean[i] + eps[i];
    SoftmaxRows(noisy.data(), n, E, probs_noisy.data());
    SoftmaxRows(clean.data(), n, E, recomputed.data());  // what the layer feeds the loss
    EXPECT_EQ(ImportanceLoss(recomputed.data(), n, E, 1.f, nullptr), reference) << draw;
    if (std::abs(ImportanceLoss(probs_noisy.data(), n, E, 1.f, nullptr) - reference) > 1e-6)
      noisy_importance_differs = true;
  }
  EXPECT_TRUE(noisy_importance_differs);
  // Case 4's gates (models/moe/README.md) as the clean probabilities: 0.03875 whatever the noise.
  const std::vector<float> g = {.5f, .4f, .1f, .3f, .3f, .4f, .1f, .2f, .7f, .8f, .2f, 0.f};
  EXPECT_NEAR(ImportanceLoss(g.data(), 4, 3, 1.f, nullptr), 0.03875, 1e-6);
}

// ---------------------------------------------------------------------------------------------
// Finite-difference checks. Every gradient is accumulated onto random non-zero contents with a
// grad_scale that is not 1, so both "accumulates" and "scaled by grad_scale" are checked too.
constexpr float kScale = 0.37f;

TEST(GradCheck, SoftmaxRowsBackward) {
  const int64_t n = 5;
  const int E = 6;
  const auto logits = RandomVec(n * E, 21, 2.f);
  const auto probe = RandomVec(n * E, 22, 1.f);
  std::vector<float> p(n * E);
  SoftmaxRows(logits.data(), n, E, p.data());
  std::vector<float> dl = RandomVec(n * E, 23, 5.f);  // garbage: must be overwritten
  SoftmaxRowsBackward(p.data(), probe.data(), n, E, dl.data());
  ExpectGradMatchesFiniteDifferences(
      "softmax", logits, dl,
      [&](const std::vector<float>& x) {
        std::vector<float> q(n * E);
        SoftmaxRows(x.data(), n, E, q.data());
        double s = 0;
        for (int64_t i = 0; i < n * E; ++i) s += static_cast<double>(q[i]) * probe[i];
        return s;
      },
      // float32 probabilities put ~3e-6 of noise on the numeric derivative: 1% on the smallest
      // elements; a wrong formula is off by O(1).
      1e-2f, /*rel_tol=*/1e-2);
}

TEST(GradCheck, ImportanceLossWrtProbs) {
  const int64_t n = 6;
  const int E = 4;
  const auto logits = RandomVec(n * E, 31, 1.5f);
  std::vector<float> p(n * E);
  SoftmaxRows(logits.data(), n, E, p.data());
  const auto g = AccumulatedGrad(n * E, kScale, [&](float* d) {
    ImportanceLoss(p.data(), n, E, kScale, d);
  });
  ExpectGradMatchesFiniteDifferences(
      "importance", p, g,
      [&](const std::vector<float>& x) { return ImportanceLoss(x.data(), n, E, 1.f, nullptr); },
      1e-3f);
}

// Importance loss chained through the softmax: the gradient w.r.t. the clean logits.
TEST(GradCheck, ImportanceLossThroughSoftmax) {
  const int64_t n = 6;
  const int E = 4;
  const auto logits = RandomVec(n * E, 41, 1.5f);
  std::vector<float> p(n * E), dp(n * E, 0.f), dl(n * E);
  SoftmaxRows(logits.data(), n, E, p.data());
  ImportanceLoss(p.data(), n, E, 1.f, dp.data());
  SoftmaxRowsBackward(p.data(), dp.data(), n, E, dl.data());
  ExpectGradMatchesFiniteDifferences(
      "importance(softmax)", logits, dl,
      [&](const std::vector<float>& x) {
        std::vector<float> q(n * E);
        SoftmaxRows(x.data(), n, E, q.data());
        return ImportanceLoss(q.data(), n, E, 1.f, nullptr);
      },
      1e-2f);
}

// The noisy logits move with the clean ones (noisy = clean + fixed eps), as in the layer, so the
// threshold path dt/dh_{j*} = 1 is part of what the differences measure.
void CheckLoadLossGradient(int64_t n, int E, int k, uint64_t key) {
  const float sigma = 1.f / E;
  const auto clean = RandomVec(n * E, key, 1.f);
  const auto eps = RandomVec(n * E, key + 1, sigma);
  const auto noisy_of = [&](const std::vector<float>& h) {
    std::vector<float> z(h.size());
    for (size_t i = 0; i < h.size(); ++i) z[i] = h[i] + eps[i];
    return z;
  };
  const auto noisy = noisy_of(clean);
  const auto g = AccumulatedGrad(n * E, kScale, [&](float* d) {
    LoadLoss(clean.data(), noisy.data(), n, E, k, sigma, kScale, d);
  });
  ExpectGradMatchesFiniteDifferences(
      "load k=" + std::to_string(k), clean, g,
      [&](const std::vector<float>& h) {
        const auto z = noisy_of(h);
        return LoadLoss(h.data(), z.data(), n, E, k, sigma, 1.f, nullptr);
      },
      // Small enough that no perturbation reorders the noisy logits of a token.
      1e-4f, 1e-2, 1e-2);
}

TEST(GradCheck, LoadLossTop1) { CheckLoadLossGradient(6, 4, 1, 51); }
TEST(GradCheck, LoadLossTop2) { CheckLoadLossGradient(8, 5, 2, 61); }

// Without the threshold path the gradient would be wrong: the row sums show it. With the path,
// each token's gradient sums to zero (adding a constant to a token's clean and noisy logits
// changes nothing), which a gradient missing dt/dh would violate.
TEST(GradCheck, LoadLossRowSumsAreZero) {
  const int64_t n = 8;
  const int E = 4, k = 2;
  const float sigma = 1.f / E;
  const auto clean = RandomVec(n * E, 71, 1.f);
  const auto eps = RandomVec(n * E, 72, sigma);
  std::vector<float> noisy(n * E), d(n * E, 0.f);
  for (int64_t i = 0; i < n * E; ++i) noisy[i] = clean[i] + eps[i];
  LoadLoss(clean.data(), noisy.data(), n, E, k, sigma, 1.f, d.data());
  double gmax = 0;
  for (float v : d) gmax = std::max(gmax, std::abs(static_cast<double>(v)));
  ASSERT_GT(gmax, 1e-4);
  for (int64_t t = 0; t < n; ++t) {
    double s = 0;
    for (int e = 0; e < E; ++e) s += d[t * E + e];
    EXPECT_NEAR(s, 0.0, 1e-6 * gmax) << "token " << t;
  }
}

TEST(GradCheck, SwitchLossWrtProbs) {
  const int64_t n = 7;
  const int E = 3;
  const auto logits = RandomVec(n * E, 81, 1.f);
  std::vector<float> p(n * E);
  SoftmaxRows(logits.data(), n, E, p.data());
  const auto g = AccumulatedGrad(n * E, kScale, [&](float* d) {
    SwitchLoss(p.data(), n, E, kScale, d);
  });
  // Steps small enough not to change any argmax, so f is constant as the gradient assumes.
  ExpectGradMatchesFiniteDifferences(
      "switch", p, g,
      [&](const std::vector<float>& x) { return SwitchLoss(x.data(), n, E, 1.f, nullptr); },
      1e-3f);
}

TEST(GradCheck, ZLossWrtLogits) {
  const int64_t n = 5;
  const int E = 4;
  const auto logits = RandomVec(n * E, 91, 2.f);
  const auto g = AccumulatedGrad(n * E, kScale, [&](float* d) {
    ZLoss(logits.data(), n, E, kScale, d);
  });
  ExpectGradMatchesFiniteDifferences(
      "zloss", logits, g,
      [&](const std::vector<float>& x) { return ZLoss(x.data(), n, E, 1.f, nullptr); }, 1e-2f);
}

TEST(AuxLosses, NullGradientPointerChangesNothingAndValuesAgree) {
  const int64_t n = 4;
  const int E = 3;
  const auto logits = RandomVec(n * E, 5, 1.f);
  std::vector<float> p(n * E), d(n * E, 0.f);
  SoftmaxRows(logits.data(), n, E, p.data());
  EXPECT_EQ(ImportanceLoss(p.data(), n, E, 1.f, nullptr), ImportanceLoss(p.data(), n, E, 2.f, d.data()));
  EXPECT_EQ(SwitchLoss(p.data(), n, E, 1.f, nullptr), SwitchLoss(p.data(), n, E, 2.f, d.data()));
  EXPECT_EQ(ZLoss(logits.data(), n, E, 1.f, nullptr), ZLoss(logits.data(), n, E, 2.f, d.data()));
  // A perfectly balanced router has zero importance loss and zero gradient.
  std::vector<float> u(n * E, 1.f / E), du(n * E, 0.f);
  EXPECT_NEAR(ImportanceLoss(u.data(), n, E, 1.f, du.data()), 0.0, 1e-12);
  for (float v : du) EXPECT_NEAR(v, 0.f, 1e-6f);
}

}  // namespace
}  // namespace moe
