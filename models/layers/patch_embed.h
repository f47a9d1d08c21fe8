// PatchEmbed: images [B, C*H*W] (CHW floats, H = W = image_size) -> tokens [B*T, dim].
//
// Non-overlapping p x p patches, T = (image_size / p)^2, taken in row-major patch order (token
// t = py * (image_size / p) + px); a patch's vector is (c, i, j) -> c*p*p + i*p + j, i.e. the
// flattening of a stride-p conv kernel [C, p, p]. Then a linear projection [C*p*p, dim] + bias
// (name + ".proj.w/.b", xavier like Linear) and a learned position embedding name + ".pos_embed"
// [T, dim] ~ N(0, 0.02^2) added to every image (the name keeps it out of weight decay).
#pragma once

#include <string>
#include <vector>

#include "models/layers/layer.h"
#include "models/layers/linear.h"

namespace moe {

class PatchEmbed : public Layer {
 public:
  PatchEmbed(const std::string& name, int64_t image_size, int64_t channels, int64_t patch_size,
             int64_t dim, uint64_t seed);

  Tensor Forward(const Tensor& images) override;
  // Accumulates proj and pos_embed grads; returns d(images) [B, C*H*W].
  Tensor Backward(const Tensor& dy) override;
  std::vector<Parameter*> Parameters() override;  // proj.w, proj.b, pos_embed

  int64_t tokens_per_image() const { return tokens_; }
  Parameter* pos_embed() { return &pos_; }
  Linear* proj() { return &proj_; }

 private:
  PatchGeometry Geometry() const { return {channels_, image_size_, patch_}; }

  std::string name_;
  int64_t image_size_, channels_, patch_, dim_, grid_, tokens_, patch_dim_;
  Linear proj_;
  Parameter pos_;
  int64_t batch_ = 0;
};

}  // namespace moe
