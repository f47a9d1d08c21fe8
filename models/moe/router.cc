#include "models/moe/router.h"

#include <glog/logging.h>

#include <algorithm>
#include <cmath>

#include "core/gemm.h"
#include "core/rng.h"
#include "core/rng_normal_fill.h"
#include "models/layers/layer_norm.h"
#include "models/layers/linear.h"
#include "models/moe/aux_losses.h"
#include "models/moe/router_math.h"

namespace moe {

namespace {

// softplus(u) = log(1 + e^u), without overflow for large u.
float Softplus(float u) {
  const double v = u;
  return static_cast<float>(v > 0 ? v + std::log1p(std::exp(-v)) : std::log1p(std::exp(v)));
}

double Sigmoid(double u) { return 1.0 / (1.0 + std::exp(-u)); }

}  // namespace

uint64_t RouterNoiseKey(uint64_t seed, const std::string& layer_name, int64_t step) {
  return MixKey(MixKey(seed, HashString(layer_name + ".router_noise")), step);
}

double RouterMacsPerImage(RouterInputKind input, double T, double D, double E) {
  return input == RouterInputKind::kImageMean ? T * D + D * E : T * D * E;
}

Router::Router(const std::string& layer_name, const MoeLayerOptions& opt, RouterInputKind input,
               uint64_t seed)
    : name_(layer_name), opt_(opt), input_(input), seed_(seed) {
  w_ = MakeParameter(name_ + ".router.w", {opt_.dim, opt_.num_experts}, InitKind::kNormal, 0.02f,
                     seed);
  if (opt_.noise == RouterNoise::kLearnedSoftplus)  // zero at init, as in Shazeer et al.
    w_noise_ = MakeParameter(name_ + ".router.w_noise", {opt_.dim, opt_.num_experts},
                             InitKind::kZeros, 0.f, seed);
  if (input_ == RouterInputKind::kAttributes) {
    CHECK_GT(opt_.attribute_dim, 0) << name_ << ": attribute routing needs attribute_dim";
    attr_proj_ = std::make_unique<Linear>(name_ + ".router.attr_proj", opt_.attribute_dim,
                                          opt_.dim, seed);
    attr_norm_ = std::make_unique<LayerNorm>(name_ + ".router.attr_norm", opt_.dim, seed);
  }
  if (input_ == RouterInputKind::kImageMean)
    CHECK_GT(opt_.tokens_per_image, 0) << name_ << ": an image-mean router needs tokens_per_image";
}

int64_t Router::RouterRows(int64_t rows) const {
  return input_ == RouterInputKind::kImageMean ? rows / opt_.tokens_per_image : rows;
}

bool Router::NoiseOn(const MoeStepContext& ctx) const {
  return ctx.training && (opt_.noise == RouterNoise::kLearnedSoftplus || opt_.noise_scale > 0.f);
}

std::vector<Parameter*> Router::Parameters(bool with_weight) {
  std::vector<Parameter*> ps;
  if (with_weight) ps.push_back(&w_);
  if (!w_noise_.value.empty()) ps.push_back(&w_noise_);
  for (Layer* l : {attr_proj_.get(), attr_norm_.get()})
    if (l != nullptr)
      for (Parameter* p : l->Parameters()) ps.push_back(p);
  return ps;
}

// The attribute embedding's parameters live with the others (the trainer's optimizer wants every
// parameter on one device); on the CUDA path it is computed on the host, from host mirrors
// refreshed each step (cuda_host_routing.cc).
void Router::MoveTo(Device device) {
  MoveParameterTo(&w_, device);
  if (!w_noise_.value.empty()) MoveParameterTo(&w_noise_, device);
  for (Layer* l : {attr_proj_.get(), attr_norm_.get()})
    if (l != nullptr) l->MoveTo(device);
}

void Router::SetInput(const Tensor& x, const MoeStepContext& ctx, Layer* proj, Layer* norm,
                      RoutingState* R) const {
  switch (input_) {
    case RouterInputKind::kAttributes: {
      CHECK(ctx.attributes != nullptr)
          << name_ << ": attribute routing needs the step's attributes";
      CHECK_EQ(ctx.attributes->dim(0), R->rows) << name_ << ": one attribute row per input row";
      CHECK_EQ(ctx.attributes->dim(1), opt_.attribute_dim) << name_ << ": attribute width";
      Tensor z = norm->Forward(proj->Forward(*ctx.attributes));
      if (opt_.attribute_with_token)
        for (int64_t i = 0; i < z.numel(); ++i) z.data()[i] += x.data()[i];
      R->router_in = z;
      break;
    }
    case RouterInputKind::kImageMean: {
      // The paper leaves the per-image router input open; the mean of the image's tokens
      // (models/moe/README.md, "Per-image routing with super-class guidance").
      const int64_t T = opt_.tokens_per_image, D = opt_.dim;
      R->router_in = Tensor::Zeros({R->router_rows, D});
      for (int64_t t = 0; t < R->rows; ++t) {
        float* m = R->router_in.data() + (t / T) * D;
        const float* xt = x.data() + t * D;
        for (int64_t j = 0; j < D; ++j) m[j] += xt[j] / static_cast<float>(T);
      }
      break;
    }
    case RouterInputKind::kToken: R->router_in = x;
  }
}

void Router::Logits(const float* w, RoutingState* R) const {
  const int E = opt_.num_experts;
  R->clean_logits.resize(R->router_rows * E);  // beta = 0: the GEMM writes every entry
  Sgemm(false, false, R->router_rows, E, opt_.dim, 1.f, R->router_in.data(), opt_.dim, w, E, 0.f,
        R->clean_logits.data(), E);
}

// R->noisy_logits = the clean logits + training noise, keyed as the header says.
void Router::AddNoise(const MoeStepContext& ctx, RoutingState* R) const {
  const int E = opt_.num_experts;
  const int64_t rows = R->router_rows, G = R->groups, per_group = rows / G;
  CounterRng rng(RouterNoiseKey(seed_, name_, ctx.step));
  R->noise_draw.resize(rows * E);
  for (int64_t g = 0; g < G; ++g)  // draw i of group g: NormalF32(global group, i)
    FillNormalF32Lanes(rng, static_cast<uint64_t>(ctx.first_global_group + g), 0, per_group * E,
                       R->noise_draw.data() + g * per_group * E);
  if (opt_.noise == RouterNoise::kFixed) {  // one pass: noisy = clean + sigma n
    const float sigma = opt_.noise_scale / E;
    R->noisy_logits.resize(rows * E);
    for (int64_t i = 0; i < rows * E; ++i)
      R->noisy_logits[i] = R->clean_logits[i] + sigma * R->noise_draw[i];
    return;
  }
  R->noisy_logits = R->clean_logits;
  // Kept for the backward: dH/du = n * sigmoid(u).
  R->noise_pre.assign(rows * E, 0.f);
  Sgemm(false, false, rows, E, opt_.dim, 1.f, R->router_in.data(), opt_.dim,
        w_noise_.value.data(), E, 0.f, R->noise_pre.data(), E);
  for (int64_t i = 0; i < rows * E; ++i)
    R->noisy_logits[i] += Softplus(R->noise_pre[i]) * R->noise_draw[i];
}

void Router::Probs(const MoeStepContext& ctx, bool noisy, RoutingState* R) const {
  const int E = opt_.num_experts;
  const int64_t rows = R->router_rows;
  CHECK_EQ(static_cast<int64_t>(R->clean_logits.size()), rows * E);
  R->noise_pre.clear();
  R->noisy = noisy;
  if (noisy) {
    AddNoise(ctx, R);  // noisy_logits = clean_logits + noise
  } else {
    R->noisy_logits = R->clean_logits;
  }
  R->probs.resize(rows * E);
  SoftmaxRows(R->noisy_logits.data(), rows, E, R->probs.data());
  if (noisy) {
    R->probs_clean.resize(rows * E);
    SoftmaxRows(R->clean_logits.data(), rows, E, R->probs_clean.data());
  } else {
    R->probs_clean = R->probs;
  }
  // Sized by the losses that write them (AuxGradBuffer): most steps need one or two of the four.
  R->d_probs_aux.clear();
  R->d_probs_clean_aux.clear();
  R->d_logits_aux.clear();
  R->d_clean_logits_aux.clear();
  R->d_gate_aux.clear();
}

void Router::AuxLosses(const MoeStepContext& ctx, int64_t n, int k, bool noisy, RoutingState* R,
                       MoeMetrics* m) const {
  if (!ctx.training) return;
  const int E = opt_.num_experts;
  const float sigma = opt_.noise_scale / E;
  const float per_group = 1.f / static_cast<float>(ctx.num_global_groups);
  const size_t size = R->router_rows * E;
  for (int64_t g = 0; g < R->groups; ++g) {
    const int64_t o = g * n * E;
    if (opt_.importance_weight > 0) {
      const double l = ImportanceLoss(R->probs_clean.data() + o, n, E,
                                      opt_.importance_weight * per_group,
                                      AuxGradBuffer(&R->d_probs_clean_aux, size) + o);
      m->importance_loss += l;
      m->aux_loss += opt_.importance_weight * per_group * l;
    }
    if (opt_.load_weight > 0 && noisy && sigma > 0) {
      const double l = LoadLoss(R->clean_logits.data() + o, R->noisy_logits.data() + o, n, E, k,
                                sigma, opt_.load_weight * per_group,
                                AuxGradBuffer(&R->d_clean_logits_aux, size) + o);
      m->load_loss += l;
      m->aux_loss += opt_.load_weight * per_group * l;
    }
    if (opt_.switch_weight > 0) {
      const double l = SwitchLoss(R->probs.data() + o, n, E, opt_.switch_weight * per_group,
                                  AuxGradBuffer(&R->d_probs_aux, size) + o);
      m->switch_loss += l;
      m->aux_loss += opt_.switch_weight * per_group * l;
    }
    if (opt_.z_weight > 0) {
      const double l = ZLoss(R->noisy_logits.data() + o, n, E, opt_.z_weight * per_group,
                             AuxGradBuffer(&R->d_logits_aux, size) + o);
      m->z_loss += l;
      m->aux_loss += opt_.z_weight * per_group * l;
    }
  }
  AddBalanceSqLoss(ctx, n, k, R, m);
}

// The balance loss sum_e (1/E - mean_i G_ie)^2 on G, the plan's k gates of each router row
// scattered to [n, E] (0 for the experts not kept; dropped choices count, G is the gating
// function's output). Its gradient is w.r.t. the gates, so the router backward sends it through
// the rule's own gate backward, and from there to W_r and W_noise.
void Router::AddBalanceSqLoss(const MoeStepContext& ctx, int64_t n, int k, RoutingState* R,
                              MoeMetrics* m) const {
  if (opt_.balance_sq_weight <= 0) return;
  const int E = opt_.num_experts;
  // Per-image: an image's choices are repeated on its tokens; its first token stands for it
  // (the per-image gate backward sums the tokens' gradients).
  const int64_t stride = R->rows / R->router_rows;
  const float scale = opt_.balance_sq_weight / static_cast<float>(ctx.num_global_groups);
  R->d_gate_aux.assign(R->rows * k, 0.f);
  std::vector<float> G(n * E), dG(n * E);
  for (int64_t g = 0; g < R->groups; ++g) {
    std::fill(G.begin(), G.end(), 0.f);
    std::fill(dG.begin(), dG.end(), 0.f);
    const auto choice = [&](int64_t i, int r) { return (g * n + i) * stride * k + r; };
    for (int64_t i = 0; i < n; ++i)
      for (int r = 0; r < k; ++r) G[i * E + R->expert[choice(i, r)]] = R->gate[choice(i, r)];
    const double l = BalanceSqLoss(G.data(), n, E, scale, dG.data());
    m->balance_sq_loss += l;
    m->aux_loss += scale * l;
    for (int64_t i = 0; i < n; ++i)
      for (int r = 0; r < k; ++r) R->d_gate_aux[choice(i, r)] = dG[i * E + R->expert[choice(i, r)]];
  }
}

namespace {

// *sum += v elementwise, where v is an auxiliary gradient (empty = zeros: nothing to add).
void AddPresent(const std::vector<float>& v, std::vector<float>* sum) {
  if (v.empty()) return;
  for (size_t i = 0; i < v.size(); ++i) (*sum)[i] += v[i];
}

}  // namespace

// The noise is additive (H = h + eps, eps = n sigma or n softplus(u)), so every path reaches h
// with slope 1; the clean-probability and clean-logit aux terms join there. The terms beside the
// softmax backward are summed first, in one fixed order: d_logits, z loss, importance (through
// the clean softmax), load / guidance.
std::vector<float> Router::CleanLogitsGrad(const std::vector<float>& d_probs,
                                           const std::vector<float>& d_logits,
                                           RoutingState* R) const {
  const int E = opt_.num_experts;
  const int64_t RR = R->router_rows;
  std::vector<float> d_clean(RR * E);
  SoftmaxRowsBackward(R->probs.data(), d_probs.data(), RR, E, d_clean.data());
  std::vector<float> d_side = d_logits;  // the noisy logits' own gradient
  AddPresent(R->d_logits_aux, &d_side);
  R->d_noise_pre.clear();
  if (!R->noise_pre.empty()) {  // dH/du = n sigmoid(u), on the paths through the noisy logits
    R->d_noise_pre.resize(RR * E);
    for (int64_t i = 0; i < RR * E; ++i)
      R->d_noise_pre[i] = static_cast<float>((d_clean[i] + d_side[i]) * R->noise_draw[i] *
                                             Sigmoid(R->noise_pre[i]));
  }
  if (!R->d_probs_clean_aux.empty()) {
    std::vector<float> d_from_clean_probs(RR * E);
    SoftmaxRowsBackward(R->probs_clean.data(), R->d_probs_clean_aux.data(), RR, E,
                        d_from_clean_probs.data());
    AddPresent(d_from_clean_probs, &d_side);
  }
  AddPresent(R->d_clean_logits_aux, &d_side);
  for (int64_t i = 0; i < RR * E; ++i) d_clean[i] += d_side[i];
  return d_clean;
}

void Router::ApplyGrad(const RoutingState& R, const std::vector<float>& d_clean, const float* w,
                       float* w_grad, Tensor* dx, Layer* proj, Layer* norm) const {
  const int E = opt_.num_experts;
  const int64_t rows = R.rows, RR = R.router_rows, D = opt_.dim;
  Sgemm(true, false, D, E, RR, 1.f, R.router_in.data(), D, d_clean.data(), E, 1.f, w_grad, E);
  if (input_ == RouterInputKind::kToken) {
    if (dx != nullptr)
      Sgemm(false, true, rows, D, E, 1.f, d_clean.data(), E, w, E, 1.f, dx->data(), D);
    return;
  }
  Tensor d_in({RR, D});  // d(router input), then its share of dx
  Sgemm(false, true, RR, D, E, 1.f, d_clean.data(), E, w, E, 0.f, d_in.data(), D);
  if (input_ == RouterInputKind::kImageMean) {
    if (dx == nullptr) return;
    const int64_t T = opt_.tokens_per_image;
    for (int64_t t = 0; t < rows; ++t) {
      const float* di = d_in.data() + (t / T) * D;
      float* dxt = dx->data() + t * D;
      for (int64_t j = 0; j < D; ++j) dxt[j] += di[j] / static_cast<float>(T);
    }
    return;
  }
  // kAttributes: z = LayerNorm(Linear(a)) (+ x when the router also sees the token).
  if (opt_.attribute_with_token && dx != nullptr)
    for (int64_t i = 0; i < d_in.numel(); ++i) dx->data()[i] += d_in.data()[i];
  proj->Backward(norm->Backward(d_in));
}

// H = h + n softplus(u), u = x W_noise: W_noise's gradient += x^T dH/du, dx += (dH/du) W_noise^T.
void Router::ApplyNoiseGrad(const RoutingState& R, Tensor* dx) {
  const int E = opt_.num_experts;
  const int64_t D = opt_.dim, rows = R.router_rows;
  Sgemm(true, false, D, E, rows, 1.f, R.router_in.data(), D, R.d_noise_pre.data(), E, 1.f,
        w_noise_.grad.data(), E);
  if (dx != nullptr)
    Sgemm(false, true, rows, D, E, 1.f, R.d_noise_pre.data(), E, w_noise_.value.data(), E, 1.f,
          dx->data(), D);
}

void Router::Backward(const std::vector<float>& d_clean, const RoutingState& R, Tensor* dx) {
  ApplyGrad(R, d_clean, w_.value.data(), w_.grad.data(), dx, attr_proj_.get(), attr_norm_.get());
  if (!R.d_noise_pre.empty()) ApplyNoiseGrad(R, dx);
}

}  // namespace moe
