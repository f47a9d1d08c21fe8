// PreNormBlock: the pre-LayerNorm transformer block shared by the ViT-based nets (V-MoE, Mobile
// V-MoE, conditional MoE), as two Residuals:
//   h = x + attn(LN1(x));   y = h + mlp(LN2(h))
// attn is any token-mixing layer (self-attention, routed attention), mlp a dense MLP or a MoE
// layer. Parameters come in the order ln1, attn, ln2, mlp. Devices as Residual.
// attn_drop / mlp_drop (optional, e.g. DropPath): a last layer of each branch, before the add.
#pragma once

#include <memory>
#include <vector>

#include "models/layers/layer.h"
#include "models/layers/residual.h"

namespace moe {

class PreNormBlock : public Layer {
 public:
  PreNormBlock(std::unique_ptr<Layer> ln1, std::unique_ptr<Layer> attn, std::unique_ptr<Layer> ln2,
               std::unique_ptr<Layer> mlp, std::unique_ptr<Layer> attn_drop = nullptr,
               std::unique_ptr<Layer> mlp_drop = nullptr);

  Tensor Forward(const Tensor& x) override;
  Tensor Backward(const Tensor& dy) override;
  std::vector<Parameter*> Parameters() override;
  void MoveTo(Device d) override;

  // The branch layers (owned by the block), for callers that count their cost.
  Layer* attn() const { return attn_; }
  Layer* mlp() const { return mlp_; }

 private:
  Layer* attn_;
  Layer* mlp_;
  std::unique_ptr<Residual> attn_part_, mlp_part_;
};

}  // namespace moe
