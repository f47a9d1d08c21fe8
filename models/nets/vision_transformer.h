// VisionTransformer: a pre-LayerNorm ViT whose MLPs may be MoE layers (V-MoE).
//
//   patches -> PatchEmbed (+ position embedding) -> L blocks -> LayerNorm -> mean over tokens
//   -> Linear head
//   block i: h = x + Attention(LN1(x));  y = h + MLP_i(LN2(h)),  MLP_i dense or MoE by placement
//
// The dense ViT is the same net with use_moe off, so the two are compared like for like.
// model.drop_path_rate > 0 ends both branches of block i with a DropPath at rate
// r i / (L - 1) (models/layers/drop_path.h); at 0 no DropPath layer is built.
#pragma once

#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "models/layers/layer.h"
#include "models/nets/net.h"
#include "models/moe/moe_layer.h"
#include "models/moe/moe_layer_config.h"
#include "models/nets/moe_placement.h"
#include "proto/moe_ep.pb.h"

namespace moe {

class LayerNorm;
class PreNormBlock;
class MultiHeadSelfAttention;
class PatchEmbed;
class MeanPoolTokens;
class Linear;


class VisionTransformer : public Net {
 public:
  // adjust_moe (optional): changes the i-th MoE layer's options before it is built (Mobile
  // V-MoE's shared router makes its layers follow an external decision).
  using MoeOptionsAdjust = std::function<void(size_t moe_index, MoeLayerOptions*)>;
  VisionTransformer(const proto::ModelConfig& config, Communicator* comm, uint64_t seed,
                    const MoeOptionsAdjust& adjust_moe = nullptr);
  ~VisionTransformer() override;

  // images: [B, C*H*W]; returns logits [B, num_classes].
  Tensor Forward(const Tensor& images) override;
  // dlogits: [B, num_classes]; accumulates every parameter's grad.
  void Backward(const Tensor& dlogits) override;

  std::vector<Parameter*> Parameters() override;
  // Moves every child layer's parameters (and MoE device state) to d. Forward then takes images
  // on d; the residual adds run where the activations are (AddInPlaceCuda on CUDA).
  void MoveTo(Device d) override;
  double FlopsPerImage() const override;
  int tokens_per_image() const { return tokens_per_image_; }

 protected:
  // Hooks around block i (no-ops here): x is the block's input in Forward; dx its gradient in
  // Backward, to which a subclass that read x adds its share (Mobile V-MoE's shared router).
  virtual void OnBlockInput(int /*block*/, const Tensor& /*x*/) {}
  virtual void OnBlockInputGrad(int /*block*/, Tensor* /*dx*/) {}

 private:
  proto::ModelConfig config_;
  int tokens_per_image_;
  std::unique_ptr<PatchEmbed> embed_;
  std::vector<std::unique_ptr<PreNormBlock>> blocks_;
  std::unique_ptr<LayerNorm> final_norm_;
  std::unique_ptr<MeanPoolTokens> pool_;
  std::unique_ptr<Linear> head_;
};

}  // namespace moe
