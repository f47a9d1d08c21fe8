// Each operation rounded once (no FMA contraction): the load loss's passes are compiled for several
// vector widths, and every width must give the bits of the x86-64 baseline build.
#pragma GCC optimize("fp-contract=off")

#include "models/moe/aux_losses.h"

#include <glog/logging.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/kernels/cpu/gelu.h"
#include "models/moe/router_math.h"

namespace moe {

double NormalCdf(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }

double NormalPdf(double x) {
  static const double kInvSqrt2Pi = 1.0 / std::sqrt(2.0 * M_PI);
  return kInvSqrt2Pi * std::exp(-0.5 * x * x);
}

double CvSquared(const double* v, int E, double* dv) {
  CHECK_GE(E, 1);
  double m = 0;
  for (int e = 0; e < E; ++e) m += v[e];
  m /= E;
  double var = 0;
  for (int e = 0; e < E; ++e) var += (v[e] - m) * (v[e] - m);
  var /= E;
  if (!(m > 0)) {
    if (dv) std::fill(dv, dv + E, 0.0);
    return 0.0;
  }
  if (dv) {
    const double c = 2.0 / (E * m * m);
    for (int e = 0; e < E; ++e) dv[e] = c * ((v[e] - m) - var / m);
  }
  return var / (m * m);
}

namespace {

// The importance and load losses' passes over all n x E (token, expert) pairs, compiled for
// AVX-512, AVX2 and the baseline (picked once at load time by the CPU; the x86-64 baseline alone
// has 4-wide SSE and a slow divide). Contraction is off in this file, so every clone gives the
// same bits.
#define MOE_AUX_LOSS_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

// z[t, e] = (threshold_t - h[t, e]) / sigma, threshold_t = kth[t * k + k - 1].
MOE_AUX_LOSS_CLONES void LoadZ(const float* h, const float* kth, int64_t n, int E, int k,
                               float sigma, float* z) {
  for (int64_t t = 0; t < n; ++t) {
    const float thr = kth[t * k + k - 1];
    for (int e = 0; e < E; ++e) z[t * E + e] = (thr - h[t * E + e]) / sigma;
  }
}

// load[e] = sum_t tail[t, e] in double, t ascending.
MOE_AUX_LOSS_CLONES void SumColumns(const float* tail, int64_t n, int E, double* load) {
  for (int e = 0; e < E; ++e) load[e] = 0;
  for (int64_t t = 0; t < n; ++t)
    for (int e = 0; e < E; ++e) load[e] += tail[t * E + e];
}

// d[t, e] += term[e] for every row t.
MOE_AUX_LOSS_CLONES void AddToEveryRow(const float* term, int64_t n, int E, float* d) {
  for (int64_t t = 0; t < n; ++t)
    for (int e = 0; e < E; ++e) d[t * E + e] += term[e];
}

// Per token: row_e = c_dload[e] phi(z_e), the threshold expert's row_e -= sum_e row_e (summed in
// 8 interleaved partial sums combined in a fixed order, not one chain of E dependent adds);
// d_clean[t, :] += row in float. The products are formed twice (once for the sum, once for the
// write) so that no row is stored and read back.
MOE_AUX_LOSS_CLONES void LoadGradRows(const double* c_dload, const float* pdf, const int* kth_idx,
                                      int64_t n, int E, int k, float* d_clean) {
  constexpr int kLanes = 8;
  for (int64_t t = 0; t < n; ++t) {
    const float* p = pdf + t * E;
    double part[kLanes] = {};
    int e = 0;
    for (; e + kLanes <= E; e += kLanes)
      for (int j = 0; j < kLanes; ++j) part[j] += c_dload[e + j] * p[e + j];
    for (int j = 0; e < E; ++e, ++j) part[j] += c_dload[e] * p[e];
    const double to_threshold =
        ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
    // Every expert's term in one branch-free vector loop, then the threshold expert's entry
    // rewritten from its value before the loop, with its term less the sum.
    const int j = kth_idx[t * k + k - 1];
    const float before = d_clean[t * E + j];
    for (int i = 0; i < E; ++i) d_clean[t * E + i] += static_cast<float>(c_dload[i] * p[i]);
    d_clean[t * E + j] = before + static_cast<float>(c_dload[j] * p[j] - to_threshold);
  }
}

}  // namespace

double ImportanceLoss(const float* probs_clean, int64_t n, int E, float grad_scale,
                      float* dprobs_clean) {
  CHECK_GE(n, 0);
  CHECK_GE(E, 1);
  if (n == 0) return 0.0;
  std::vector<double> imp(E), dimp(E);
  SumColumns(probs_clean, n, E, imp.data());
  const double loss = CvSquared(imp.data(), E, dprobs_clean ? dimp.data() : nullptr);
  if (dprobs_clean) {  // the same term for every token: rounded once per expert
    std::vector<float> term(E);
    for (int e = 0; e < E; ++e) term[e] = static_cast<float>(grad_scale * dimp[e]);
    AddToEveryRow(term.data(), n, E, dprobs_clean);
  }
  return loss;
}

// z, 1 - Phi(z) and phi(z) in float for all n E pairs at once (one vectorised pass, no per-pair
// branch); the sums over tokens and everything after them in double, as before.
double LoadLoss(const float* clean_logits, const float* noisy_logits, int64_t n, int E, int k,
                float sigma, float grad_scale, float* dclean_logits) {
  CHECK_GE(n, 0);
  CHECK(k >= 1 && k <= E) << "LoadLoss: need 1 <= k <= E, got k=" << k << " E=" << E;
  CHECK(sigma > 0) << "LoadLoss: sigma must be > 0, got " << sigma;
  if (n == 0) return 0.0;
  // Reused across calls (one per routing group and step): no allocation in the steady state.
  thread_local std::vector<int> idx;
  thread_local std::vector<float> val, z, tail, pdf;
  idx.resize(n * k);
  val.resize(n * k);
  z.resize(n * E);
  tail.resize(n * E);
  pdf.resize(n * E);
  TopKRows(noisy_logits, n, E, k, idx.data(), val.data());
  LoadZ(clean_logits, val.data(), n, E, k, sigma, z.data());  // (t(x) - h_e(x)) / sigma
  NormalTailAndPdf(z.data(), n * E, tail.data(), dclean_logits ? pdf.data() : nullptr);
  std::vector<double> load(E);
  SumColumns(tail.data(), n, E, load.data());  // sum_x 1 - Phi(z)
  for (int e = 0; e < E; ++e) load[e] /= static_cast<double>(n);
  std::vector<double> dload(E);
  const double loss = CvSquared(load.data(), E, dclean_logits ? dload.data() : nullptr);
  if (dclean_logits) {
    const double c = static_cast<double>(grad_scale) / (static_cast<double>(sigma) * n);
    std::vector<double> c_dload(E);
    for (int e = 0; e < E; ++e) c_dload[e] = c * dload[e];
    LoadGradRows(c_dload.data(), pdf.data(), idx.data(), n, E, k, dclean_logits);
  }
  return loss;
}

double SwitchLoss(const float* probs, int64_t n, int E, float grad_scale, float* dprobs) {
  CHECK_GE(n, 0);
  CHECK_GE(E, 1);
  if (n == 0) return 0.0;
  std::vector<double> f(E, 0.0), P(E, 0.0);
  for (int64_t t = 0; t < n; ++t) {
    const float* p = probs + t * E;
    int best = 0;
    for (int e = 0; e < E; ++e) {
      if (p[e] > p[best]) best = e;  // strict: ties keep the lower index
      P[e] += p[e];
    }
    f[best] += 1.0;
  }
  double loss = 0;
  for (int e = 0; e < E; ++e) {
    f[e] /= n;
    P[e] /= n;
    loss += f[e] * P[e];
  }
  loss *= E;
  if (dprobs) {
    for (int64_t t = 0; t < n; ++t)
      for (int e = 0; e < E; ++e)
        dprobs[t * E + e] += static_cast<float>(grad_scale * E * f[e] / n);
  }
  return loss;
}

double ZLoss(const float* logits, int64_t n, int E, float grad_scale, float* dlogits) {
  CHECK_GE(n, 0);
  CHECK_GE(E, 1);
  if (n == 0) return 0.0;
  double loss = 0;
  for (int64_t t = 0; t < n; ++t) {
    const float* l = logits + t * E;
    double mx = l[0];
    for (int e = 1; e < E; ++e) mx = std::max(mx, static_cast<double>(l[e]));
    double s = 0;
    for (int e = 0; e < E; ++e) s += std::exp(l[e] - mx);
    const double lse = mx + std::log(s);
    loss += lse * lse;
    if (dlogits) {
      const double c = grad_scale * 2.0 * lse / (n * s);
      for (int e = 0; e < E; ++e) dlogits[t * E + e] += static_cast<float>(c * std::exp(l[e] - mx));
    }
  }
  return loss / n;
}

double BalanceSqLoss(const float* gates, int64_t n, int E, float grad_scale, float* dgates) {
  CHECK_GE(n, 0);
  CHECK_GE(E, 1);
  if (n == 0) return 0.0;
  std::vector<double> dev(E, 1.0 / E);  // 1/E - m_e
  for (int64_t t = 0; t < n; ++t)
    for (int e = 0; e < E; ++e) dev[e] -= static_cast<double>(gates[t * E + e]) / n;
  double loss = 0;
  for (int e = 0; e < E; ++e) loss += dev[e] * dev[e];
  if (dgates) {
    for (int64_t t = 0; t < n; ++t)
      for (int e = 0; e < E; ++e)
        dgates[t * E + e] += static_cast<float>(grad_scale * -2.0 * dev[e] / n);
  }
  return loss;
}

}  // namespace moe
