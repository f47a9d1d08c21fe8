// Auxiliary (load-balancing) losses of one routing group, with their gradients.
//
// Each function returns the loss value of ONE group (n tokens, E experts, row-major [n, E]
// inputs) and, if the gradient pointer is non-null, ACCUMULATES grad_scale * d(loss)/d(input)
// into it. The gradient is weight-free: the MoE layer passes grad_scale = weight /
// num_global_groups (the aux loss is the mean over groups). All arithmetic is in double, except
// LoadLoss's per-pair z, Phi and phi (float, see there).
// CV(v) = std(v) / mean(v) with the population std; a non-positive mean gives loss 0, no gradient.
#pragma once

#include <cstdint>

namespace moe {

// Standard normal CDF Phi(x) = 0.5 * erfc(-x / sqrt(2)) and PDF phi(x) = exp(-x^2/2) / sqrt(2 pi).
double NormalCdf(double x);
double NormalPdf(double x);

// CV(v)^2 = var(v) / mean(v)^2 over v[0..E). If dv is non-null it is OVERWRITTEN with
// d(CV^2)/dv_e = 2 / (E m^2) * ((v_e - m) - var / m).
double CvSquared(const double* v, int E, double* dv);

// V-MoE importance loss: Imp_e = sum_t probs_clean[t, e]; L = CV(Imp)^2. probs_clean are the
// softmax of the CLEAN (noise-free) logits, so the loss does not depend on the noise draw.
// Gradient w.r.t. probs_clean: dL/dp[t, e] = dL/dImp_e for every t.
double ImportanceLoss(const float* probs_clean, int64_t n, int E, float grad_scale,
                      float* dprobs_clean);

// V-MoE load loss (google-research/vmoe `_load_loss`):
//   j*(x) = index of the k-th largest NOISY logit of token x (ties: lower index ranks higher, as
//           in TopKRows); t(x) = noisy_logits[x, j*]
//   p_e(x) = 1 - Phi((t(x) - h_e(x)) / sigma), h = clean_logits, sigma = noise std (> 0)
//   load_e = mean_x p_e(x); L = CV(load)^2.
// Gradient w.r.t. the clean logits h, including the path through the threshold: noisy = h + eps
// so dt/dh_{j*} = 1 (vmoe differentiates through logits_noisy the same way). Per token:
//   dL/dh[x, e]  += g_e * phi(z_e) / (sigma n)            z_e = (t - h_e) / sigma, g = dL/dload
//   dL/dh[x, j*] -= sum_e g_e * phi(z_e) / (sigma n)
// (for e = j* the two cancel: p_{j*} = 1 - Phi(eps_{j*} / sigma) depends on the noise only).
// z, 1 - Phi(z) and phi(z) are computed in float (NormalTailAndPdf, core/kernels/cpu/gelu.h):
// z within 1 float ulp, 1 - Phi(z) and phi(z) within a few ulps of their values at that z; the
// sums over tokens, CV^2 and the gradient's products in double.
double LoadLoss(const float* clean_logits, const float* noisy_logits, int64_t n, int E, int k,
                float sigma, float grad_scale, float* dclean_logits);

// Switch balance loss: E * sum_i f_i * P_i, f_i = fraction of tokens whose top-1 (argmax, ties
// -> lower index) is i (treated as a constant), P_i = mean_t probs[t, i].
// Gradient w.r.t. probs: E * f_i / n.
double SwitchLoss(const float* probs, int64_t n, int E, float grad_scale, float* dprobs);

// Router z-loss (ST-MoE): mean_t (logsumexp_j logits[t, j])^2.
// Gradient w.r.t. logits: 2 * lse_t * softmax(logits[t])_j / n.
double ZLoss(const float* logits, int64_t n, int E, float grad_scale, float* dlogits);

// Seed 004's squared-deviation balance loss (generic top-k MoE): L = sum_e (1/E - m_e)^2,
// m_e = mean_t gates[t, e], gates = G(x) [n, E] after KeepTopK and the gate softmax (0 for the
// experts not kept). Gradient w.r.t. the gates: dL/dG[t, e] = -2 (1/E - m_e) / n.
double BalanceSqLoss(const float* gates, int64_t n, int E, float grad_scale, float* dgates);

}  // namespace moe
