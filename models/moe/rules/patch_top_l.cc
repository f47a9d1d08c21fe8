// pMoE (Chowdhury et al. 2023): expert s's router column scores every patch of an image
// (r_{j,s} = <w_s, x_j>) and keeps its own top-l patches; a patch may go to 0..E experts. The gate
// is a softmax over the l kept scores (the MNIST version, default) or over all the image's
// patches with the kept values unnormalised (patch_gate_over_all, the WideResNet version); hard
// gates (the experts-only phase) weigh every kept patch 1 and freeze the router.
#include <glog/logging.h>

#include <algorithm>
#include <cmath>

#include "models/moe/routing_rule_registry.h"
#include "models/moe/rule_selections.h"

namespace moe {

namespace {

class PatchTopLRule : public RoutingRuleImpl {
 public:
  const char* name() const override { return "patch_top_l"; }
  bool RowsPickExperts() const override { return false; }
  int ChoicesPerRow(const MoeLayerOptions& o) const override { return o.num_experts; }
  int64_t Capacity(const MoeLayerOptions& o, double cf) const override {
    (void)cf;  // l patches of every image of the group, whatever the factor
    return static_cast<int64_t>(o.patch_top_l) * (o.group_tokens / o.tokens_per_image);
  }
  void Validate(const std::string& layer, const MoeLayerOptions& o) const override {
    CHECK_GT(o.tokens_per_image, 0) << layer << ": patch_top_l routing needs tokens_per_image";
    CHECK_EQ(o.group_tokens % o.tokens_per_image, 0)
        << layer << ": a routing group of " << o.group_tokens << " rows is not whole images of "
        << o.tokens_per_image;
    CHECK(o.patch_top_l >= 1 && o.patch_top_l <= o.tokens_per_image)
        << layer << ": patch_top_l " << o.patch_top_l << " must be in [1, tokens_per_image="
        << o.tokens_per_image << "]";
  }

  void Decide(RuleContext& c) const override {
    RoutingState& R = c.R;
    const MoeLayerOptions& o = c.opt;
    const int E = o.num_experts, l = o.patch_top_l;
    const int64_t T = o.tokens_per_image, images_per_group = o.group_tokens / T;
    const bool noisy = c.noisy;
    StartExpertSidePlan(E, &R);
    const PatchGateMode mode = o.patch_gate_over_all ? PatchGateMode::kSoftmaxOverAllKeepTopL
                                                     : PatchGateMode::kSoftmaxOverKept;
    std::vector<int64_t> patch(E * l);
    std::vector<float> gate(E * l);
    for (int64_t b = 0; b < R.rows / T; ++b) {
      const int64_t j = b % images_per_group;  // image within its routing group
      PatchTopL(R.noisy_logits.data() + b * T * E, T, E, l, mode, patch.data(), gate.data());
      for (int s = 0; s < E; ++s)
        for (int i = 0; i < l; ++i) {
          const int64_t t = b * T + patch[s * l + i];
          R.slot[t * E + s] = static_cast<int>(j * l + i);
          R.gate[t * E + s] = o.hard_gates ? 1.f : gate[s * l + i];
        }
    }
    FinishExpertSidePlan(E, c.capacity, &R, &c.metrics);
    c.router.AuxLosses(c.ctx, o.group_tokens, 1, noisy, &R, &c.metrics);  // pMoE uses none
  }

  // Per (image, expert s): a softmax backward restricted to the kept patches (or over all of
  // the image's patches, of which only the kept ones are used). Hard gates: no gradient.
  void GateBackward(RuleContext& c, const std::vector<float>& d_gate, std::vector<float>* d_probs,
                    std::vector<float>* d_logits) const override {
    (void)d_probs;
    if (c.opt.hard_gates) return;
    const int64_t T = c.opt.tokens_per_image;
    for (int64_t b = 0; b < c.R.rows / T; ++b)
      for (int s = 0; s < c.opt.num_experts; ++s) ImageExpertBackward(c, b, s, d_gate, d_logits);
  }

 private:
  static void ImageExpertBackward(const RuleContext& c, int64_t b, int s,
                                  const std::vector<float>& d_gate, std::vector<float>* d_logits) {
    const RoutingState& R = c.R;
    const int E = c.opt.num_experts;
    const int64_t T = c.opt.tokens_per_image;
    double dot = 0;
    for (int64_t j = 0; j < T; ++j) {
      const int64_t i = (b * T + j) * E + s;
      if (R.slot[i] >= 0) dot += static_cast<double>(d_gate[i]) * R.gate[i];
    }
    if (!c.opt.patch_gate_over_all) {
      for (int64_t j = 0; j < T; ++j) {
        const int64_t i = (b * T + j) * E + s;
        if (R.slot[i] >= 0) (*d_logits)[i] += static_cast<float>(R.gate[i] * (d_gate[i] - dot));
      }
      return;
    }
    // p_j = softmax over all T scores of column s; only the kept p_j are used.
    const float* lg = R.noisy_logits.data() + b * T * E;
    double mx = lg[s];
    for (int64_t j = 1; j < T; ++j) mx = std::max<double>(mx, lg[j * E + s]);
    double z = 0;
    for (int64_t j = 0; j < T; ++j) z += std::exp(lg[j * E + s] - mx);
    for (int64_t j = 0; j < T; ++j) {
      const int64_t i = (b * T + j) * E + s;
      const double p = std::exp(lg[j * E + s] - mx) / z;
      const double dp = R.slot[i] >= 0 ? d_gate[i] : 0.0;
      (*d_logits)[i] += static_cast<float>(p * (dp - dot));
    }
  }
};

}  // namespace

std::unique_ptr<RoutingRuleImpl> MakePatchTopLRule() { return std::make_unique<PatchTopLRule>(); }

}  // namespace moe
