// PatchCnn (family "pmoe"): pMoE (Chowdhury et al., ICML 2023) and its dense CNN baseline.
//
//   images -> Patchify (n non-overlapping p x p patches) -> Linear "embed" [C*p*p, D]
//          -> MoE "moe" (PATCH_TOP_L: expert s keeps its top-l patches per image, D -> H -> D)
//             or, with use_moe off, one dense Mlp "mlp" (D -> m -> D) on all n patches
//          -> mean over the n patches -> Linear "head" [D, num_classes]
//
// Why this is the paper's two-layer CNN expert. pMoE's expert s on image x is
//   f_s(x) = sum_r a_{r,s} (1/l) sum_{j in J_s(x)} G_{j,s}(x) sigma(<w_{r,s}, x_j>)
// (a conv with kernel = stride = p, i.e. a linear map of each patch's pixels; a nonlinearity;
// times the gate; an average over the kept positions; then the second layer a). Here the conv is
// embed followed by the expert's fc1 (two linear maps of the patch pixels compose to one), the
// combine hands back per patch y_j = sum_s G_{j,s} E_s(x_j) with E_s(x_j) = W2_s sigma(W1_s x_j +
// b1_s) + b2_s (0 for patches no expert kept), and the net outputs head((1/n) sum_j y_j). Both
// W2_s and head are linear, so they commute with the gate-weighted sum over positions:
//   head((1/n) sum_j y_j) = sum_s (head W2_s) (1/n) sum_{j in J_s} G_{j,s} sigma(W1_s x_j + b1_s)
//                           + constants,
// i.e. "times the gate, average over positions, then the second layer" with second layer
// head * W2_s per expert. The 1/n instead of 1/l is a constant factor that head absorbs; the b2_s
// terms add head b2_s * (sum_j G_{j,s}) / n, a constant per expert (gates sum to 1, or to l with
// hard gates). The router sees embed(x_j), an affine map of the pixels, so r_{j,s} = <w_s, x_j>
// up to a bias common to the expert's patches (which does not change its top-l nor its softmax).
//
// Departures, all documented choices: the experts use exact GELU (the shared ExpertBank; the
// paper has ReLU), and the dense baseline's Mlp too, so both sides share the nonlinearity; and a
// shared embed sits before the routers and experts (it also lets D be chosen freely).
//
// Widths: m = pmoe.conv_channels is the dense CNN's number of filters; each expert gets
// moe.expert_hidden_dim filters, or m / E when that is 0 (the paper's split of m neurons over k
// experts), so pMoE and the dense CNN hold about the same parameters while the experts run on
// E * l patch rows of width m / E instead of n rows of width m. model.mlp_dim, num_heads and
// num_layers are not used.
//
// Recipes (pmoe.recipe): JOINT trains routers and experts together. ROUTER_THEN_EXPERTS trains
// jointly for the first pmoe.router_phase_steps steps, then freezes the routers
// (Parameter::frozen) and switches the MoE layer to hard gates (a kept patch weighs 1), so only
// the experts, embed and head learn. The switch happens in SetMoeContext, from the training
// step; evaluation contexts (whose step is not the training step) keep the current phase.
#pragma once

#include <memory>
#include <vector>

#include "comm/communicator.h"
#include "models/moe/moe_layer.h"
#include "models/nets/net.h"
#include "proto/moe_ep.pb.h"

namespace moe {

class Linear;
class MeanPoolTokens;
class Mlp;
class Patchify;

// Patches per image, n = (image_size / patch_size)^2.
int64_t PmoePatchesPerImage(const proto::ModelConfig& model);
// Filters per expert: moe.expert_hidden_dim, or pmoe.conv_channels / num_experts when 0.
int PmoeExpertHidden(const proto::ModelConfig& model);
// The MoE layer's options for family "pmoe" (rows = patches, width hidden_dim).
MoeLayerOptions PmoeMoeOptions(const proto::ModelConfig& model);

class PatchCnn : public Net {
 public:
  PatchCnn(const proto::ModelConfig& config, Communicator* comm, uint64_t seed);
  ~PatchCnn() override;

  Tensor Forward(const Tensor& images) override;
  void Backward(const Tensor& dlogits) override;
  std::vector<Parameter*> Parameters() override;
  void MoveTo(Device d) override;
  double FlopsPerImage() const override;
  // Applies the recipe's phase for a training step, then hands ctx to the MoE layer.
  void SetMoeContext(const MoeStepContext& ctx) override;

  int64_t tokens_per_image() const { return tokens_; }
  // True once ROUTER_THEN_EXPERTS has frozen the routers and turned hard gates on.
  bool experts_phase() const { return experts_phase_; }
  MoeLayer* moe() { return moe_.get(); }

 private:
  void SetExpertsPhase(bool on);

  proto::ModelConfig config_;
  int64_t tokens_;
  std::unique_ptr<Patchify> patchify_;
  std::unique_ptr<Linear> embed_;
  std::unique_ptr<MoeLayer> moe_;  // use_moe
  std::unique_ptr<Mlp> mlp_;       // dense baseline
  std::unique_ptr<MeanPoolTokens> pool_;
  std::unique_ptr<Linear> head_;
  std::vector<Parameter*> routers_;  // what ROUTER_THEN_EXPERTS freezes
  bool experts_phase_ = false;
};

}  // namespace moe
