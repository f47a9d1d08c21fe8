// Auxiliary losses (models/moe/aux_losses) and the softmax backward: a hand-computed load loss
// and balance-squared loss, the importance loss's independence from the noise through the MoE
// layer, and finite-difference checks of every gradient. (Cases 4-6 of models/moe/README.md are
// in routing_cases_test.cc, case 12 in noisy_topk_test.cc.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "comm/self_communicator.h"
#include "core/rng.h"
#include "models/moe/aux_losses.h"
#include "models/moe/moe_layer.h"
#include "models/moe/router_math.h"
#include "tests/unit/normal_tail_bounds.h"

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

// LoadLoss computes each Q(z) = 1 - Phi(z) in float (aux_losses.h): z = (t - h) / sigma rounds
// twice (2u relative, u = 2^-24), which moves Q by phi(z) |z| 2u, and the kernel adds its own error
// at that z (tests/unit/normal_tail_bounds.h). A load, a mean of Q's, is off by the mean of those.
double TailErrorAt(double z) {
  return normal_tail_bounds::Pdf(z) * std::abs(z) * 2 * normal_tail_bounds::kU +
         normal_tail_bounds::TailAbsolute(z);
}

// The loss is off by sum_e |dL/dload_e| load_err_e to first order; doubled for the second-order
// terms.
double LoadLossTolerance(const std::vector<double>& load, const std::vector<double>& load_err) {
  std::vector<double> d(load.size());
  CvSquared(load.data(), static_cast<int>(load.size()), d.data());
  double b = 0;
  for (size_t e = 0; e < load.size(); ++e) b += std::abs(d[e]) * load_err[e];
  return 2 * b;
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
  EXPECT_NEAR(LoadLoss(clean.data(), noisy.data(), 2, 2, 1, 0.5f, 1.f, nullptr), expected,
              LoadLossTolerance({load0, load1}, {(TailErrorAt(0) + TailErrorAt(0.5)) / 2,
                                                  (TailErrorAt(1) + TailErrorAt(0.5)) / 2}));
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
  std::vector<double> load(E, 0), load_err(E, 0);
  for (int64_t t = 0; t < n; ++t) {
    std::vector<float> row(noisy.begin() + t * E, noisy.begin() + (t + 1) * E);
    std::sort(row.begin(), row.end(), std::greater<float>());
    const double thr = row[k - 1];
    for (int e = 0; e < E; ++e) {
      const double z = (thr - clean[t * E + e]) / sigma;
      load[e] += NormalCdf(-z) / n;
      load_err[e] += TailErrorAt(z) / n;
    }
  }
  const double expected = CvSquared(load.data(), E, nullptr);
  EXPECT_NEAR(LoadLoss(clean.data(), noisy.data(), n, E, k, sigma, 1.f, nullptr), expected,
              LoadLossTolerance(load, load_err));
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
// Importance loss through the MoE layer with router noise on. V-MoE's importance loss reads the
// CLEAN probabilities softmax(x W_r) (MoeLayer::AddAuxLosses passes R.probs_clean), so two
// steps, i.e. two noise draws, must give the same value, that of softmax(x W_r) computed here,
// while the noise does move the gates and the Switch loss, which reads the noisy probabilities.
// A layer that fed the noisy probabilities to the importance loss fails the first two checks.
TEST(ImportanceLoss, IdenticalUnderAnyNoiseDraw) {
  const int64_t n = 8, rows = 2 * n;  // two routing groups
  const int D = 6, E = 4;
  MoeLayerOptions o;
  o.dim = D;
  o.hidden = 4;
  o.num_experts = E;
  o.top_k = 2;
  o.group_tokens = n;
  o.noise_scale = 4.f;  // std 1: clearly visible next to the O(1) logits
  o.importance_weight = 1.f;
  o.load_weight = 0.f;
  o.switch_weight = 1.f;
  SelfCommunicator comm;
  MoeLayer layer("moe", o, &comm, 3);
  Parameter* router = layer.Parameters()[0];
  for (int64_t i = 0; i < router->value.numel(); ++i) router->value.at(i) *= 40.f;  // O(1) logits
  const auto xv = RandomVec(rows * D, 7, 1.f);
  Tensor x({rows, D});
  for (int64_t i = 0; i < rows * D; ++i) x.at(i) = xv[i];

  std::vector<float> clean(rows * E, 0.f), probs(rows * E);
  for (int64_t t = 0; t < rows; ++t)
    for (int e = 0; e < E; ++e)
      for (int j = 0; j < D; ++j) clean[t * E + e] += xv[t * D + j] * router->value.at(j * E + e);
  SoftmaxRows(clean.data(), rows, E, probs.data());
  const double expected = ImportanceLoss(probs.data(), n, E, 1.f, nullptr) +
                          ImportanceLoss(probs.data() + n * E, n, E, 1.f, nullptr);
  ASSERT_GT(expected, 1e-3);

  std::vector<double> importance, switch_loss;
  std::vector<std::vector<float>> gates;
  for (int64_t step : {1, 2}) {
    MoeStepContext ctx;
    ctx.training = true;
    ctx.step = step;
    ctx.num_global_groups = 2;
    layer.SetStepContext(ctx);
    layer.Forward(x);
    importance.push_back(layer.metrics().importance_loss);
    switch_loss.push_back(layer.metrics().switch_loss);
    gates.emplace_back();
    layer.ForEachKeptAssignment([&](int64_t, int, float g) { gates.back().push_back(g); });
  }
  EXPECT_EQ(importance[0], importance[1]);  // same clean logits, bit for bit
  // The layer's GEMM sums in another order than the loop above: logits a few ulp apart.
  EXPECT_NEAR(importance[0], expected, 1e-5 * expected);
  EXPECT_NE(gates[0], gates[1]) << "the two draws must move the gates";
  EXPECT_GT(std::abs(switch_loss[0] - switch_loss[1]), 1e-4) << "noisy-probability loss";
  // Case 4's gates (models/moe/README.md) as the clean probabilities: 0.03875.
  const std::vector<float> g = {.5f, .4f, .1f, .3f, .3f, .4f, .1f, .2f, .7f, .8f, .2f, 0.f};
  EXPECT_NEAR(ImportanceLoss(g.data(), 4, 3, 1.f, nullptr), 0.03875, 1e-6);
}

// Seed 004's balance loss sum_e (1/E - mean_t G[t, e])^2 on case 12's gates (noisy_topk_test.cc):
// G = [[0, 0, 3/7, 4/7], [3/4, 1/4, 0, 0]], mean [3/8, 1/8, 3/14, 2/7],
// L = (1/8)^2 + (1/8)^2 + (1/28)^2 + (1/28)^2 = 0.0338010204. Gates spread evenly give 0.
TEST(BalanceSqLoss, MatchesHandComputedValue) {
  const std::vector<float> g = {0.f, 0.f, 3.f / 7, 4.f / 7, .75f, .25f, 0.f, 0.f};
  EXPECT_NEAR(BalanceSqLoss(g.data(), 2, 4, 1.f, nullptr), 0.0338010204, 1e-8);
  const std::vector<float> even = {.5f, .5f, 0.f, 0.f, 0.f, 0.f, .5f, .5f};
  std::vector<float> d(8, 0.f);
  EXPECT_NEAR(BalanceSqLoss(even.data(), 2, 4, 1.f, d.data()), 0.0, 1e-12);
  for (float v : d) EXPECT_NEAR(v, 0.f, 1e-7f);
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

// A quadratic in the gates: central differences are exact up to rounding.
TEST(GradCheck, BalanceSqLossWrtGates) {
  const int64_t n = 5;
  const int E = 4;
  const auto gates = RandomVec(n * E, 95, .5f);
  const auto g = AccumulatedGrad(n * E, kScale, [&](float* d) {
    BalanceSqLoss(gates.data(), n, E, kScale, d);
  });
  ExpectGradMatchesFiniteDifferences(
      "balance_sq", gates, g,
      [&](const std::vector<float>& x) { return BalanceSqLoss(x.data(), n, E, 1.f, nullptr); },
      1e-2f);
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
