// Patchify: images [B, C*S*S] (CHW, S = image_size) -> patches [B*T, C*p*p], no parameters.
//
// Non-overlapping p x p patches, T = (S / p)^2, in row-major patch order (token t = py * (S/p) +
// px) and element order (c, i, j) -> c*p*p + i*p + j: the same layout as PatchEmbed, so a Linear
// on the result is exactly a conv with kernel = stride = p (the first layer of pMoE's two-layer
// CNN). Unlike PatchEmbed it adds no position embedding: a CNN's filters are shared over
// positions, and pMoE's routers must choose patches by content, not by where they sit.
// Backward is the inverse permutation (patches do not overlap, so nothing is summed).
#pragma once

#include "models/layers/layer.h"

namespace moe {

class Patchify : public Layer {
 public:
  Patchify(int64_t image_size, int64_t channels, int64_t patch_size);

  Tensor Forward(const Tensor& images) override;
  Tensor Backward(const Tensor& dpatches) override;  // -> d(images) [B, C*S*S]

  int64_t tokens_per_image() const { return tokens_; }
  int64_t patch_dim() const { return patch_dim_; }

 private:
  PatchGeometry Geometry() const { return {channels_, image_size_, patch_}; }

  int64_t image_size_, channels_, patch_, grid_, tokens_, patch_dim_;
  int64_t batch_ = 0;
  Device last_device_ = Device::kCPU;
};

}  // namespace moe
