// PatchCnn (family "pmoe"): pMoE (Chowdhury et al., ICML 2023) and its dense CNN baseline.
//
//   images -> Patchify (n p x p patches every s pixels) -> Linear "embed" [C*p*p, D]
//          -> MoE "moe" (PATCH_TOP_L: expert s keeps its top-l patches per image, D -> H -> D)
//             or, with use_moe off, one dense Mlp "mlp" (D -> m -> D) on all n patches
//          -> mean over each of G x G regions of the patch grid, concatenated
//          -> Linear "head" [G*G*D, num_classes]
//
// Patches: s = pmoe.patch_stride (default p: non-overlapping, n = (S/p)^2, the paper's setting);
// s < p gives overlapping patches, g = (S - p) / s + 1 per side, n = g^2: a conv with kernel p
// and stride s. Pooling: G = pmoe.pool_grid (default 1: the global mean over all n patches);
// G > 1 cuts the g x g grid into G x G equal regions R_1..R_{G^2} of n_R = n / G^2 patches and
// the head reads every region's mean, so the classifier keeps where on the image a feature was.
//
// Why this is the paper's two-layer CNN expert. pMoE's expert s on image x is
//   f_s(x) = sum_r a_{r,s} (1/l) sum_{j in J_s(x)} G_{j,s}(x) sigma(<w_{r,s}, x_j>)
// (a conv, i.e. a linear map of each patch's pixels; a nonlinearity; times the gate; an average
// over the kept positions; then the second layer a). Here the conv is embed followed by the
// expert's fc1 (two linear maps of the patch pixels compose to one), the combine hands back per
// patch y_j = sum_s G_{j,s} E_s(x_j) with E_s(x_j) = W2_s sigma(W1_s x_j + b1_s) + b2_s (0 for
// patches no expert kept), and the net outputs sum_R head_R ((1/n_R) sum_{j in R} y_j), head_R
// being region R's D rows of head. W2_s and head_R are linear, so they commute with the
// gate-weighted sum over positions:
//   logits = sum_s sum_R (head_R W2_s) (1/n_R) sum_{j in J_s and R} G_{j,s} sigma(W1_s x_j + b1_s)
//            + constants,
// i.e. "times the gate, average over positions, then the second layer", with second layer
// head_R * W2_s per expert and region: with G = 1 one second layer per expert as in the paper;
// with G > 1 the second layer's weights may differ by region (the paper's a_{r,s} become
// a_{r,s,R}), which is still a linear readout of the gated first-layer activations. The 1/n_R
// instead of 1/l is a constant factor that head absorbs; the b2_s terms add
// head_R b2_s * (sum_{j in R} G_{j,s}) / n_R, a constant per expert and region when G = 1 (gates
// sum to 1, or to l with hard gates), and with G > 1 a bias that follows how many of the
// expert's patches fall in each region. The router sees embed(x_j), an affine map of the pixels,
// so r_{j,s} = <w_s, x_j> up to a bias common to the expert's patches (which does not change its
// top-l nor its softmax).
//
// Experts use ReLU as in the paper (pmoe.expert_activation, default RELU; GELU is the option
// that matches the dense baseline's Mlp, which stays GELU). A shared embed sits before the
// routers and experts (it also lets D be chosen freely).
//
// Widths: m = pmoe.conv_channels is the dense CNN's number of filters; each expert gets
// moe.expert_hidden_dim filters, or m / E when that is 0 (the paper's split of m neurons over k
// experts), so pMoE and the dense CNN hold about the same parameters while the experts run on
// E * l patch rows of width m / E instead of n rows of width m. model.mlp_dim, num_heads and
// num_layers are not used.
//
// Recipes (pmoe.recipe). JOINT trains routers, experts, embed and head together.
// ROUTER_THEN_EXPERTS is the paper's separate training, as its released MNIST code does it:
//  * Router phase (training steps < pmoe.router_phase_steps): only the routers learn, with their
//    own loss. The released code makes the routers a linear classifier: every router's scores
//    are averaged over all n patches of the image, m_s = (1/n) sum_j r_{j,s}, a FIXED readout
//    (+16 for class +1's router, -16 for class -1's) gives the output, and the loss is the linear
//    loss -y f. Multi-class here: expert s serves the classes c with s = c (mod min(E, C)), the
//    fixed readout gives z_c = mean over c's experts of m_s, and Forward returns z as the logits,
//    so the trainer's softmax cross-entropy is the routers' loss (the multi-class counterpart of
//    the linear loss, which is unbounded and would only grow the routers' scale). Each router
//    learns to score its classes' patches above the others'. Experts, embed and head are frozen
//    and untouched, so the experts of the next phase start fresh, as in the paper.
//  * Experts phase: routers frozen, hard gates (a kept patch weighs 1, the router gets no
//    gradient), and fresh experts and head train on the routed patches.
//  What the routers see is frozen too: embed keeps its initial values for the whole recipe, so
//  a router's score is a fixed linear function of the raw patch, <W_e w_s, x_j> (embed's bias
//  starts at 0), exactly the paper's bias-free linear router on pixels; since W_e [P, D] has
//  rank P when D >= P, that reparameterisation loses nothing, and the experts' fc1 on top of
//  the fixed W_e still realises any first-layer conv. Were embed to train in the experts
//  phase, the frozen routers would score drifting features and the selected patches would move.
//  Frozen parameters get no gradient (their backward is skipped), so they do not count in the
//  clipping norm. The phase follows the training step in SetMoeContext; evaluation contexts
//  (whose step is not the training step) keep the current phase.
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

// The conv stride s (pmoe.patch_stride, or patch_size when 0), patches per side
// g = (image_size - patch_size) / s + 1, and patches per image n = g^2.
int64_t PmoeStride(const proto::ModelConfig& model);
int64_t PmoeGrid(const proto::ModelConfig& model);
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
  enum class Phase { kJoint, kRouters, kExperts };
  Phase phase() const { return phase_; }
  // True once ROUTER_THEN_EXPERTS has frozen the routers and turned hard gates on.
  bool experts_phase() const { return phase_ == Phase::kExperts; }
  MoeLayer* moe() { return moe_.get(); }

 private:
  void SetPhase(Phase phase);
  // The router phase's forward: z = readout(router(mean over patches of h)), see above.
  Tensor RouterPhaseForward(const Tensor& h);
  void RouterPhaseBackward(const Tensor& dlogits);
  // The per-region means [B*n, D] -> [B, G*G*D] and back.
  Tensor Pool(const Tensor& y);
  Tensor PoolBackward(const Tensor& dpooled);

  proto::ModelConfig config_;
  int64_t tokens_;
  int64_t regions_ = 1;  // G*G pooling regions
  std::unique_ptr<Patchify> patchify_;
  std::unique_ptr<Linear> embed_;
  std::unique_ptr<MoeLayer> moe_;  // use_moe
  std::unique_ptr<Mlp> mlp_;       // dense baseline
  std::unique_ptr<MeanPoolTokens> pool_;
  std::unique_ptr<Linear> head_;
  std::vector<Parameter*> routers_;  // the MoE layer's router weights
  // Router phase: a bias-free Linear whose weight is re-bound to the router's value and grad
  // before each use (so both phases train the same tensor on either device), and the fixed
  // expert-to-class readout [E, num_classes] (not a Parameter: it never trains).
  std::unique_ptr<Linear> router_view_;
  std::unique_ptr<Linear> readout_;
  std::unique_ptr<MeanPoolTokens> router_pool_;  // the router phase's mean over all n patches
  Phase phase_ = Phase::kJoint;
};

}  // namespace moe
