// Per-image routing (Mobile V-MoE, Daxberger et al. 2023): one decision per image, from the mean
// of its tokens; the image's top-k experts and gates are copied to all of its tokens, and
// capacity counts whole images (an image is kept or dropped as a whole). Optional super-class
// guidance: CE(clean router logits, super-class) per image, weight superclass_weight. With
// external_decision the decision comes from the caller (Mobile V-MoE's shared router) and the
// layer has no router loss of its own.
#include <glog/logging.h>

#include <algorithm>
#include <cmath>

#include "models/moe/capacity.h"
#include "models/moe/routing_rule_registry.h"

namespace moe {

namespace {

class PerImageRule : public RoutingRuleImpl {
 public:
  const char* name() const override { return "per_image"; }
  RouterInputKind router_input() const override { return RouterInputKind::kImageMean; }
  // Whole images: the rounding applies to the image count, then C counts their tokens.
  int64_t Capacity(const MoeLayerOptions& o, double cf) const override {
    return o.tokens_per_image * CapacityPerExpert(o.top_k, o.group_tokens / o.tokens_per_image,
                                                  cf, o.num_experts, o.rounding);
  }
  void Validate(const std::string& layer, const MoeLayerOptions& o) const override {
    CHECK_GT(o.tokens_per_image, 0) << layer << ": per_image routing needs tokens_per_image";
    CHECK_EQ(o.group_tokens % o.tokens_per_image, 0)
        << layer << ": a routing group of " << o.group_tokens << " rows is not whole images of "
        << o.tokens_per_image;
    if (o.external_decision)
      CHECK(o.noise == RouterNoise::kFixed && o.importance_weight == 0.f &&
            o.load_weight == 0.f && o.switch_weight == 0.f && o.z_weight == 0.f &&
            o.balance_sq_weight == 0.f)
          << layer << ": an external decision's router losses are its owner's";
  }

  void Decide(RuleContext& c) const override {
    if (c.opt.external_decision) {
      FollowExternalDecision(c);
      return;
    }
    RoutingState& R = c.R;
    const int k = R.kc, E = c.opt.num_experts;
    const int64_t B = R.router_rows;
    const bool noisy = c.noisy;
    std::vector<int> img_expert(B * k);
    std::vector<float> img_gate(B * k);
    TopKGates(R.probs.data(), B, E, k, RenormalisedGates(c.opt), img_expert.data(),
              img_gate.data());
    SpreadOverTokens(c, img_expert, img_gate);
    // Capacity is a whole number of images and an image's tokens are contiguous with equal
    // gates, so (in token or BPR order) an image is kept or dropped as a whole.
    FillCapacitySlots(c.opt, c.capacity, &R, &c.metrics);
    c.router.AuxLosses(c.ctx, c.opt.group_tokens / c.opt.tokens_per_image, k, noisy, &R,
                       &c.metrics);
    AddSuperclassGuidance(c);
  }

  // Every token of an image shares its choices: their gate gradients sum per image first.
  void GateBackward(RuleContext& c, const std::vector<float>& d_gate, std::vector<float>* d_probs,
                    std::vector<float>* d_logits) const override {
    (void)d_logits;
    const RoutingState& R = c.R;
    const int E = c.opt.num_experts, kc = R.kc;
    const int64_t T = c.opt.tokens_per_image, B = R.router_rows;
    std::vector<float> dg_img(B * kc, 0.f);
    for (int64_t t = 0; t < R.rows; ++t)
      for (int r = 0; r < kc; ++r) dg_img[(t / T) * kc + r] += d_gate[t * kc + r];
    const bool renormalised = RenormalisedGates(c.opt);
    for (int64_t i = 0; i < B; ++i)  // the image's first token holds its choices
      TopKGatesBackward(R.probs.data() + i * E, R.expert.data() + i * T * kc,
                        R.gate.data() + i * T * kc, dg_img.data() + i * kc, kc, renormalised,
                        d_probs->data() + i * E);
  }

 private:
  static void SpreadOverTokens(RuleContext& c, const std::vector<int>& img_expert,
                               const std::vector<float>& img_gate) {
    RoutingState& R = c.R;
    const int k = R.kc;
    const int64_t T = c.opt.tokens_per_image;
    R.expert.resize(R.rows * k);
    R.gate.resize(R.rows * k);
    for (int64_t t = 0; t < R.rows; ++t)
      for (int r = 0; r < k; ++r) {
        R.expert[t * k + r] = img_expert[(t / T) * k + r];
        R.gate[t * k + r] = img_gate[(t / T) * k + r];
      }
  }

  // The shared router decided for this layer: spread each image's experts and gates over its
  // tokens and fill capacity as Decide does.
  static void FollowExternalDecision(RuleContext& c) {
    const ExternalImageDecision* ext = c.external;
    CHECK(ext != nullptr) << c.layer << ": no external decision set (SetExternalDecision)";
    const int64_t n = c.R.router_rows * c.R.kc;
    CHECK_EQ(static_cast<int64_t>(ext->expert.size()), n) << c.layer << ": decision size";
    CHECK_EQ(static_cast<int64_t>(ext->gate.size()), n) << c.layer << ": gate size";
    for (int e : ext->expert)
      CHECK(e >= 0 && e < c.opt.num_experts) << c.layer << ": expert " << e << " out of range";
    SpreadOverTokens(c, ext->expert, ext->gate);
    FillCapacitySlots(c.opt, c.capacity, &c.R, &c.metrics);
  }

  // CE(clean router logits, super-class) per image, scaled like the classification loss so P
  // ranks sum to 1 rank's value.
  static void AddSuperclassGuidance(RuleContext& c) {
    if (!c.ctx.training || c.opt.superclass_weight <= 0.f) return;
    RoutingState& R = c.R;
    const int E = c.opt.num_experts;
    const int64_t B = R.router_rows;
    CHECK(c.ctx.superclass != nullptr)
        << c.layer << ": super-class guidance needs super-class labels";
    CHECK_EQ(static_cast<int64_t>(c.ctx.superclass->size()), B)
        << c.layer << ": one label per image";
    CHECK_GT(c.ctx.image_loss_scale, 0.f) << c.layer << ": image_loss_scale not set";
    const float w = c.opt.superclass_weight * c.ctx.image_loss_scale;
    for (int64_t i = 0; i < B; ++i) {
      const int sc = (*c.ctx.superclass)[i];
      CHECK(sc >= 0 && sc < E) << c.layer << ": super-class " << sc << " of image " << i
                               << " is not an expert id in [0, " << E << ")";
      const float* p = R.probs_clean.data() + i * E;
      const double ce = -std::log(std::max(static_cast<double>(p[sc]), 1e-30));
      c.metrics.superclass_loss += ce;
      c.metrics.aux_loss += w * ce;
      if (std::max_element(p, p + E) - p == sc) ++c.metrics.superclass_correct;
      float* d_clean = AuxGradBuffer(&R.d_clean_logits_aux, R.probs_clean.size()) + i * E;
      for (int e = 0; e < E; ++e) d_clean[e] += w * (p[e] - (e == sc ? 1.f : 0.f));
    }
  }
};

}  // namespace

std::unique_ptr<RoutingRuleImpl> MakePerImageRule() { return std::make_unique<PerImageRule>(); }

}  // namespace moe
