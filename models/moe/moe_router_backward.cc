// Backward of every routing rule's router: from d(gate) per choice to the router's parameters
// and the layer input. Slots and the top-k/top-l selections are piecewise constant, so only the
// gates carry gradient; the aux-loss gradients computed in Forward are added here.
#include <glog/logging.h>

#include <algorithm>
#include <cmath>

#include "core/gemm.h"
#include "models/moe/moe_layer.h"
#include "models/moe/moe_routing_state.h"
#include "models/moe/router_math.h"

namespace moe {

namespace {

// d(gate) of k renormalised gates g_r = p_r / S (S = sum of the k kept probs) -> d(p) at the
// chosen experts: dp_j = (dg_j - sum_r dg_r g_r) / S.
void RenormalisedGateBackward(const float* probs_row, const int* expert, const float* gate,
                              const float* dg, int k, float* dprobs_row) {
  double S = 0, dot = 0;
  for (int r = 0; r < k; ++r) {
    S += probs_row[expert[r]];
    dot += static_cast<double>(dg[r]) * gate[r];
  }
  for (int r = 0; r < k; ++r) dprobs_row[expert[r]] += static_cast<float>((dg[r] - dot) / S);
}

// The gates' gradient: the combine's, plus that of the aux losses that read the gates (a
// dropped choice gets only the latter: the loss sees the gating function, not the capacity).
std::vector<float> WithGateAux(const std::vector<float>& d_gate, const std::vector<float>& aux) {
  std::vector<float> d = d_gate;
  for (size_t i = 0; i < aux.size(); ++i) d[i] += aux[i];
  return d;
}

double Sigmoid(double u) { return 1.0 / (1.0 + std::exp(-u)); }

}  // namespace

void MoeLayer::RouterBackward(const std::vector<float>& d_gate, Tensor* dx) {
  ApplyRouterGrad(RouterLogitsGrad(d_gate), router_.value.data(), router_.grad.data(), dx,
                  attr_proj_.get(), attr_norm_.get());
  if (!routing_->d_noise_pre.empty()) ApplyNoiseGrad(dx);
}

// An external decision's gates are shared by the image's tokens: their gradients sum per image
// into the owner's buffer (which also collects the other layers' share).
void MoeLayer::ExternalDecisionBackward(const std::vector<float>& d_gate) {
  const Routing& R = *routing_;
  const int k = R.kc;
  const int64_t T = opt_.tokens_per_image;
  CHECK(external_ != nullptr) << name_ << ": no external decision";
  CHECK_EQ(static_cast<int64_t>(external_->d_gate.size()), R.router_rows * k)
      << name_ << ": the owner must size d_gate like the decision";
  for (int64_t t = 0; t < R.rows; ++t)
    for (int r = 0; r < k; ++r) external_->d_gate[(t / T) * k + r] += d_gate[t * k + r];
}

// H = h + n softplus(u), u = x W_noise: W_noise's gradient += x^T dH/du, dx += (dH/du) W_noise^T
// (token top-k only: the router input is the layer input).
void MoeLayer::ApplyNoiseGrad(Tensor* dx) {
  Routing& R = *routing_;
  const int E = opt_.num_experts;
  const int64_t D = opt_.dim, rows = R.router_rows;
  Sgemm(true, false, D, E, rows, 1.f, R.router_in.data(), D, R.d_noise_pre.data(), E, 1.f,
        w_noise_.grad.data(), E);
  if (dx != nullptr)
    Sgemm(false, true, rows, D, E, 1.f, R.d_noise_pre.data(), E, w_noise_.value.data(), E, 1.f,
          dx->data(), D);
}

std::vector<float> MoeLayer::RouterLogitsGrad(const std::vector<float>& d_gate_combine) {
  Routing& R = *routing_;
  const int E = opt_.num_experts, kc = R.kc;
  const int64_t rows = R.rows, RR = R.router_rows;
  CHECK_EQ(static_cast<int64_t>(d_gate_combine.size()), rows * kc) << name_ << ": d_gate size";
  const std::vector<float> d_gate = WithGateAux(d_gate_combine, R.d_gate_aux);
  std::vector<float> d_probs = R.d_probs_aux;          // w.r.t. softmax(noisy logits)
  std::vector<float> d_logits(RR * E, 0.f);            // w.r.t. the (noisy) logits directly
  const bool renormalised = RenormalisedGates();

  switch (opt_.rule) {
    case RoutingRule::kTokenTopK:
    case RoutingRule::kAttribute:
      for (int64_t t = 0; t < rows; ++t) {
        if (renormalised) {
          RenormalisedGateBackward(R.probs.data() + t * E, R.expert.data() + t * kc,
                                   R.gate.data() + t * kc, d_gate.data() + t * kc, kc,
                                   d_probs.data() + t * E);
        } else {
          for (int r = 0; r < kc; ++r) d_probs[t * E + R.expert[t * kc + r]] += d_gate[t * kc + r];
        }
      }
      break;
    case RoutingRule::kPerImage: {
      // Every token of an image shares its choices: sum their gate grads per image first.
      const int64_t T = opt_.tokens_per_image;
      std::vector<float> dg_img(RR * kc, 0.f);
      for (int64_t t = 0; t < rows; ++t)
        for (int r = 0; r < kc; ++r) dg_img[(t / T) * kc + r] += d_gate[t * kc + r];
      for (int64_t i = 0; i < RR; ++i) {
        const int* ex = R.expert.data() + i * T * kc;  // the image's first token holds its choices
        const float* g = R.gate.data() + i * T * kc;
        if (renormalised) {
          RenormalisedGateBackward(R.probs.data() + i * E, ex, g, dg_img.data() + i * kc, kc,
                                   d_probs.data() + i * E);
        } else {
          for (int r = 0; r < kc; ++r) d_probs[i * E + ex[r]] += dg_img[i * kc + r];
        }
      }
      break;
    }
    case RoutingRule::kExpertChoice:
      // gate(t, e) = probs(t, e) wherever expert e took token t.
      for (int64_t t = 0; t < rows; ++t)
        for (int e = 0; e < E; ++e)
          if (R.slot[t * E + e] >= 0) d_probs[t * E + e] += d_gate[t * E + e];
      break;
    case RoutingRule::kPatchTopL: {
      if (opt_.hard_gates) break;  // fixed gates of 1: the router is frozen in this phase
      // Per (image, expert s): gates are a softmax over the kept patches' scores (or over all
      // patches, kept values unnormalised). Softmax backward restricted to that set.
      const int64_t T = opt_.tokens_per_image, B = rows / T;
      for (int64_t b = 0; b < B; ++b)
        for (int s = 0; s < E; ++s) {
          double dot = 0;
          for (int64_t j = 0; j < T; ++j) {
            const int64_t c = (b * T + j) * E + s;
            if (R.slot[c] >= 0) dot += static_cast<double>(d_gate[c]) * R.gate[c];
          }
          if (!opt_.patch_gate_over_all) {
            for (int64_t j = 0; j < T; ++j) {
              const int64_t c = (b * T + j) * E + s;
              if (R.slot[c] >= 0) d_logits[c] += static_cast<float>(R.gate[c] * (d_gate[c] - dot));
            }
          } else {
            // p_j = softmax over all T scores of column s; only kept p_j are used.
            const float* lg = R.noisy_logits.data() + b * T * E;
            double mx = lg[s];
            for (int64_t j = 1; j < T; ++j) mx = std::max<double>(mx, lg[j * E + s]);
            double z = 0;
            for (int64_t j = 0; j < T; ++j) z += std::exp(lg[j * E + s] - mx);
            for (int64_t j = 0; j < T; ++j) {
              const int64_t c = (b * T + j) * E + s;
              const double p = std::exp(lg[j * E + s] - mx) / z;
              const double dp = R.slot[c] >= 0 ? d_gate[c] : 0.0;
              d_logits[c] += static_cast<float>(p * (dp - dot));
            }
          }
        }
      break;
    }
  }

  return CleanLogitsGrad(d_probs, d_logits);
}

// d(noisy probs) and d(noisy logits) -> d(clean logits). The noise is additive (H = h + eps,
// eps = n sigma or n softplus(u)), so every path reaches h with slope 1; the clean-probability
// and clean-logit aux terms join there. With learned noise, u's gradient is kept for W_noise.
std::vector<float> MoeLayer::CleanLogitsGrad(const std::vector<float>& d_probs,
                                             const std::vector<float>& d_logits) {
  Routing& R = *routing_;
  const int E = opt_.num_experts;
  const int64_t RR = R.router_rows;
  std::vector<float> d_clean(RR * E);
  SoftmaxRowsBackward(R.probs.data(), d_probs.data(), RR, E, d_clean.data());
  R.d_noise_pre.clear();
  if (!R.noise_pre.empty()) {  // dH/du = n sigmoid(u), on the paths through the noisy logits
    R.d_noise_pre.resize(RR * E);
    for (int64_t i = 0; i < RR * E; ++i)
      R.d_noise_pre[i] = static_cast<float>((d_clean[i] + d_logits[i] + R.d_logits_aux[i]) *
                                            R.noise_draw[i] * Sigmoid(R.noise_pre[i]));
  }
  std::vector<float> d_from_clean_probs(RR * E);
  SoftmaxRowsBackward(R.probs_clean.data(), R.d_probs_clean_aux.data(), RR, E,
                      d_from_clean_probs.data());
  for (int64_t i = 0; i < RR * E; ++i)
    d_clean[i] += d_logits[i] + R.d_logits_aux[i] + d_from_clean_probs[i] + R.d_clean_logits_aux[i];
  return d_clean;
}

void MoeLayer::ApplyRouterGrad(const std::vector<float>& d_clean, const float* w, float* w_grad,
                               Tensor* dx, Layer* proj, Layer* norm) {
  Routing& R = *routing_;
  const int E = opt_.num_experts;
  const int64_t rows = R.rows, RR = R.router_rows, D = opt_.dim;
  Sgemm(true, false, D, E, RR, 1.f, R.router_in.data(), D, d_clean.data(), E, 1.f, w_grad, E);

  // d(router input), then its share of dx.
  if (opt_.rule == RoutingRule::kTokenTopK || opt_.rule == RoutingRule::kExpertChoice ||
      opt_.rule == RoutingRule::kPatchTopL) {
    if (dx != nullptr)
      Sgemm(false, true, rows, D, E, 1.f, d_clean.data(), E, w, E, 1.f, dx->data(), D);
    return;
  }
  Tensor d_in({RR, D});
  Sgemm(false, true, RR, D, E, 1.f, d_clean.data(), E, w, E, 0.f, d_in.data(), D);
  if (opt_.rule == RoutingRule::kPerImage) {
    if (dx == nullptr) return;
    const int64_t T = opt_.tokens_per_image;
    for (int64_t t = 0; t < rows; ++t) {
      const float* di = d_in.data() + (t / T) * D;
      float* dxt = dx->data() + t * D;
      for (int64_t j = 0; j < D; ++j) dxt[j] += di[j] / static_cast<float>(T);
    }
    return;
  }
  // kAttribute: z = LayerNorm(Linear(a)) (+ x when the router also sees the token).
  if (opt_.attribute_with_token && dx != nullptr)
    for (int64_t i = 0; i < d_in.numel(); ++i) dx->data()[i] += d_in.data()[i];
  proj->Backward(norm->Backward(d_in));
}

}  // namespace moe
