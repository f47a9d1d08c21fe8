// Exact (erf) GELU, elementwise on any shape. Not the tanh approximation: ViT / V-MoE use the
// exact form, and the MoE experts (same kernel, core/kernels/cpu/gelu.h) must match the dense MLP.
#pragma once

#include "models/layers/layer.h"

namespace moe {

class Gelu : public Layer {
 public:
  Gelu() = default;
  // Keeps what the backend's backward needs (Backend::GeluForward: gelu'(x) on the host, x on
  // CUDA, a shared buffer): on CUDA, do not overwrite x in place before Backward.
  Tensor Forward(const Tensor& x) override;
  Tensor Backward(const Tensor& dy) override;

 private:
  Tensor saved_;
};

}  // namespace moe
