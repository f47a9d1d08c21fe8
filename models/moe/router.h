// Router: the learned part of routing, shared by every routing rule. It turns the layer input into
// router rows, scores them (logits = router_in x W_r), adds the training noise, takes the softmax
// and computes the auxiliary load-balancing losses; backward, it takes the rule's gradient w.r.t.
// the probabilities / logits back to W_r, W_noise, the attribute embedding and the layer input.
// What the scores MEAN (top-k per token, top-C per expert, ...) is the rule's business
// (routing_rule.h); the router never asks which rule it serves.
//
// Router input, by RouterInputKind (the rule says which one it routes on):
//   kToken       every input row                                        router rows = rows
//   kImageMean   the mean of each image's tokens (sum of x / T in token order)   rows / T
//   kAttributes  LayerNorm(Linear(attribute bits)) per row (+ the row itself with
//                attribute_with_token); the embedding is the router's own parameters  rows
// The training noise: N(0, 1) draws keyed on (layer, step, global group, router row in group,
// expert) -- RouterNoiseKey -- so whichever rank routes a group draws the same numbers; std
// noise_scale / E (V-MoE) or softplus(router_in x W_noise) (Shazeer et al. 2017).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/parameter.h"
#include "core/tensor.h"
#include "models/layers/layer.h"
#include "models/moe/moe_options.h"
#include "models/moe/routing_state.h"

namespace moe {

enum class RouterInputKind { kToken, kImageMean, kAttributes };

// The per-(layer, step) key of the router noise draws; every path that draws router noise (host,
// device, the routed linear pair) derives its draws from it.
uint64_t RouterNoiseKey(uint64_t seed, const std::string& layer_name, int64_t step);

// Multiply-adds per image of a router on an image of T tokens of width D, E experts (an
// image-mean router scores one mean row; the mean itself is T * D adds).
double RouterMacsPerImage(RouterInputKind input, double T, double D, double E);

class Router {
 public:
  Router(const std::string& layer_name, const MoeLayerOptions& opt, RouterInputKind input,
         uint64_t seed);

  RouterInputKind input_kind() const { return input_; }
  // Router rows for `rows` input rows (an image mean scores one row per image).
  int64_t RouterRows(int64_t rows) const;
  // Training, and some noise configured.
  bool NoiseOn(const MoeStepContext& ctx) const;

  // W_r [D, E], W_noise [D, E] (empty unless learned noise), the attribute embedding (kAttributes).
  Parameter& weight() { return w_; }
  Parameter& noise_weight() { return w_noise_; }
  Layer* attr_proj() { return attr_proj_.get(); }
  Layer* attr_norm() { return attr_norm_.get(); }
  // Every parameter; W_r is left out when another owner holds the decision (external_decision).
  std::vector<Parameter*> Parameters(bool with_weight);
  void MoveTo(Device device);

  // ---- forward, host arrays ----
  // R->router_in from the host input x (x may be empty for kAttributes without the token); the
  // attribute embedding runs through `proj` and `norm` (this router's, or host mirrors of them).
  void SetInput(const Tensor& x, const MoeStepContext& ctx, Layer* proj, Layer* norm,
                RoutingState* R) const;
  void Logits(const float* w, RoutingState* R) const;  // R->clean_logits = router_in x w (host)
  // Noise on the clean logits (when `noisy`), softmax, and zeroed aux-loss gradient arrays.
  void Probs(const MoeStepContext& ctx, bool noisy, RoutingState* R) const;
  // The auxiliary losses of every routing group of n router rows with k choices each, averaged
  // over the global batch's groups: values into *m, gradients into R (applied in backward).
  void AuxLosses(const MoeStepContext& ctx, int64_t n, int k, bool noisy, RoutingState* R,
                 MoeMetrics* m) const;

  // ---- backward ----
  // d(noisy probs) and d(noisy logits) -> d(clean logits), with the aux terms; keeps
  // R->d_noise_pre for the learned noise.
  std::vector<float> CleanLogitsGrad(const std::vector<float>& d_probs,
                                     const std::vector<float>& d_logits, RoutingState* R) const;
  // w_grad += router_in^T d_clean (host [D, E]); dx += the router input's share (skipped when dx
  // is nullptr); kAttributes: backward through `norm` and `proj`.
  void ApplyGrad(const RoutingState& R, const std::vector<float>& d_clean, const float* w,
                 float* w_grad, Tensor* dx, Layer* proj, Layer* norm) const;
  // Learned noise: W_noise's gradient and its share of dx (token input only).
  void ApplyNoiseGrad(const RoutingState& R, Tensor* dx);
  // The host path's whole router backward: ApplyGrad with this router's parameters, then the
  // noise gradient.
  void Backward(const std::vector<float>& d_clean, const RoutingState& R, Tensor* dx);

 private:
  void AddNoise(const MoeStepContext& ctx, RoutingState* R) const;
  void AddBalanceSqLoss(const MoeStepContext& ctx, int64_t n, int k, RoutingState* R,
                        MoeMetrics* m) const;

  std::string name_;
  MoeLayerOptions opt_;
  RouterInputKind input_;
  uint64_t seed_;
  Parameter w_;        // [D, E], dense: replicated on every rank
  Parameter w_noise_;  // [D, E], dense; learned noise only (empty otherwise)
  std::unique_ptr<Layer> attr_proj_, attr_norm_;  // kAttributes: z = LayerNorm(Linear(a))
};

}  // namespace moe
