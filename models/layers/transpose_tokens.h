// TransposeTokens: [B*T, D] -> [B*D, T], each image's [T, D] block transposed to [D, T].
//
// Activations are row-major with one row per token; the MLP-Mixer's token mixing (and Sparse-MLP's
// MoE_S, whose routed rows are channel vectors) must act along the token axis instead, so it
// runs ordinary row-wise layers (Linear, Mlp, MoeLayer) between two of these. Backward is the
// inverse transpose. The transpose back is the same layer built with tokens_per_image = D:
// [B*D, T] -> [B*T, D]. No parameters; a pure permutation, bit-exact on every device.
#pragma once

#include "models/layers/layer.h"

namespace moe {

class TransposeTokens : public Layer {
 public:
  // Rows per image of the INPUT (T); the width D is read from the input.
  explicit TransposeTokens(int64_t tokens_per_image);

  Tensor Forward(const Tensor& x) override;      // x [B*T, D] -> [B*D, T]
  Tensor Backward(const Tensor& dy) override;    // dy [B*D, T] -> dx [B*T, D]

  int64_t tokens_per_image() const { return tokens_; }

 private:
  int64_t tokens_;
  int64_t batch_ = 0, dim_ = 0;
  Device last_device_ = Device::kCPU;  // the last Forward's input device
};

}  // namespace moe
