// MlpMixer: MLP-Mixer (Tolstikhin 2021) and Sparse-MLP (Lou 2021), family "mixer".
//
//   patches -> PatchEmbed (no position embedding) -> L blocks -> LayerNorm -> mean over patches
//   -> Linear head
//   dense block:  x = x + T_C(TokenMlp(T_S(LN1(x))));  x = x + ChannelMlp(LN2(x))
// Activations are [B*S, C] (one row per patch, S = patches per image, C = model.hidden_dim).
// T_S = TransposeTokens(S) turns each image's [S, C] into [C, S], so the token MLP (S ->
// token_mlp_dim -> S) acts along patches for every channel; T_C = TransposeTokens(C) turns it back.
// The token MLP's output layer has no bias (it would be constant over a patch's channels, which
// LayerNorm removes: a parameter with an identically zero gradient).
//
// With model.use_moe the last mixer.num_sparse_blocks blocks are Sparse-MLP blocks: MoE_S replaces
// the token MLP (its routed rows are channel vectors: B*C1 rows of width S1) and MoE_C the
// channel MLP (B*S rows of width C), both the shared MoeLayer with V-MoE gating. Re-represent
// layers (mixer.re_represent) map S -> S1 = 2S along patches and C -> C1 = C/2 along channels
// before MoE_S and back after it, keeping the element count:
//   x = x + Lin_{C1->C}(T_C1(Lin_{S1->S}(MoE_S(Lin_{S->S1}(T_S(Lin_{C->C1}(LN1(x))))))))
//   x = x + MoE_C(LN2(x))
// (each axis map runs on the layout where it is a row-wise Linear, the smaller-rows order).
// mixer.re_represent_both (the secondary source's reading: one re-represented space for both
// MoEs; the residual and LayerNorm placement inside it is our choice, as no source gives it):
//   z = Lin_{S->S1}(T_S(Lin_{C->C1}(LN1(x))))              [B*C1, S1]
//   z = z + MoE_S(z);  z = T_C1(z)                          [B*S1, C1]
//   z = z + MoE_C(LN3(z))                                   MoE_C rows: B*S1 of width C1
//   x = x + Lin_{C1->C}(T_C1(Lin_{S1->S}(T_S1(z))))
//
// Expert widths. Sparse-MLP builds its MoEs from experts shaped like the dense Mixer MLPs they
// replace (it describes no narrowing), so by default an MoE_C expert is C -> channel_mlp_dim -> C
// and an MoE_S expert S1 -> token_mlp_dim -> S1: the dense token MLP's hidden width, on the
// re-represented rows. Because C1 * S1 = C * S, a top-1 MoE_S expert then costs exactly the
// dense token MLP; a top-2 MoE_C costs two dense channel MLPs.
// mixer.token_expert_hidden_dim / channel_expert_hidden_dim > 0 set other widths (the
// FLOPs-matched form halves both, sparse_mlp_flops_matched_tiny.pbtxt).
//
// The shared PatchEmbed carries a learned position embedding, which MLP-Mixer does not have (the
// token MLPs already see positions): the mixer zeroes it and marks it frozen, so it computes
// exactly a Mixer's embedding. It stays in Parameters() (1 x S x C frozen zeros) so MoveTo and
// the trainer treat every PatchEmbed alike.
//
// Stochastic depth (model.drop_path_rate > 0): a DropPath ends each block's own residual branches
// (token and channel mixing; not the residuals nested inside a sparse block's branch), at rate
// r i / (L - 1) in block i (models/layers/drop_path.h).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "models/layers/layer.h"
#include "models/moe/moe_layer.h"
#include "models/nets/net.h"
#include "proto/moe_ep.pb.h"

namespace moe {

class LayerNorm;
class PatchEmbed;
class MeanPoolTokens;
class Linear;

class MlpMixer : public Net {
 public:
  MlpMixer(const proto::ModelConfig& config, Communicator* comm, uint64_t seed);
  ~MlpMixer() override;

  // images: [B, C*H*W]; returns logits [B, num_classes].
  Tensor Forward(const Tensor& images) override;
  void Backward(const Tensor& dlogits) override;
  std::vector<Parameter*> Parameters() override;
  // Moves every layer (MoE layers with their device state) to d; residual adds run where the
  // activations are.
  void MoveTo(Device d) override;
  // Multiply-adds x 2 per image, tallied layer by layer as the net is built: patch embedding,
  // every Linear / MLP (re-represent maps included), every MoE layer's router plus k expert MLPs
  // per routed row (expert choice: capacity_factor_eval experts per row on average), the head.
  // LayerNorm, GELU, transposes and residual adds are not counted (as in the ViT's count).
  double FlopsPerImage() const override { return 2 * macs_per_image_; }
  int patches_per_image() const { return patches_; }

 private:
  proto::ModelConfig config_;
  int patches_;
  double macs_per_image_ = 0;
  std::unique_ptr<PatchEmbed> embed_;
  std::vector<std::unique_ptr<Layer>> body_;  // residual units, in order
  std::unique_ptr<LayerNorm> final_norm_;
  std::unique_ptr<MeanPoolTokens> pool_;
  std::unique_ptr<Linear> head_;
};

}  // namespace moe
