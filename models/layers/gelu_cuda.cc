// Gelu's CUDA path (see gelu.h): the exact-erf kernels of core/kernels/cuda/gelu_kernels.h.
// Default stream.
#ifdef MOE_EP_HAS_CUDA

#include "core/kernels/cuda/gelu_kernels.h"
#include "models/layers/device_tensor.h"
#include "models/layers/gelu.h"

namespace moe {

Tensor Gelu::ForwardCuda(const Tensor& x) {
  x_ = x;
  Tensor y = NewDeviceTensor(x.shape());
  if (x.numel() > 0) GeluForwardCuda(x.data(), y.data(), x.numel());
  return y;
}

Tensor Gelu::BackwardCuda(const Tensor& dy) {
  Tensor dx = NewDeviceTensor(x_.shape());
  if (x_.numel() > 0) GeluBackwardCuda(x_.data(), dy.data(), dx.data(), x_.numel());
  return dx;
}

}  // namespace moe

#endif  // MOE_EP_HAS_CUDA
