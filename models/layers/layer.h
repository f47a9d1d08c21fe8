// The layer contract, Caffe-style: Forward caches what Backward needs; Backward takes dL/dy,
// ACCUMULATES into each parameter's grad (so shared or repeated use sums correctly) and returns
// dL/dx. Activations are 2-D [rows, features] unless a layer says otherwise; a ViT's tokens are
// [batch * tokens_per_image, dim] with an image's tokens contiguous.
#pragma once

#include <vector>

#include "core/parameter.h"
#include "core/tensor.h"

namespace moe {

class Layer {
 public:
  virtual ~Layer() = default;
  virtual Tensor Forward(const Tensor& x) = 0;
  virtual Tensor Backward(const Tensor& dy) = 0;
  virtual std::vector<Parameter*> Parameters() { return {}; }
};

}  // namespace moe
