// The layer contract, Caffe-style: Forward caches what Backward needs; Backward takes dL/dy,
// ACCUMULATES into each parameter's grad (so shared or repeated use sums correctly) and returns
// dL/dx. Activations are 2-D [rows, features] unless a layer says otherwise; a ViT's tokens are
// [batch * tokens_per_image, dim] with an image's tokens contiguous.
//
// Devices: a layer runs where its input is. Forward/Backward on a CUDA tensor take the layer's
// device path (built only with MOE_EP_HAS_CUDA; the sibling <layer>_cuda.cc files), which needs
// the parameters on the device first: MoveTo(Device::kCUDA). Same maths as the host path (same
// float operations where the kernels allow; GEMMs through cuBLAS sum in another order). For now
// every device launch is on the legacy default stream (nullptr); per-layer streams come later.
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
  // Moves every parameter (value and grad) to d. Layers with other device state override.
  // Cached activations stay where they are: call Forward again after a move.
  virtual void MoveTo(Device d) {
    for (Parameter* p : Parameters()) MoveParameterTo(p, d);
  }
};

}  // namespace moe
