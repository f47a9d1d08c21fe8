#include "models/layers/gelu.h"

#include <glog/logging.h>

#include "core/kernels/cpu/gelu.h"

namespace moe {

Tensor Gelu::Forward(const Tensor& x) {
#ifdef MOE_EP_HAS_CUDA
  if (x.device() == Device::kCUDA) return ForwardCuda(x);
#endif
  CHECK(x.device() == Device::kCPU) << "Gelu: unsupported device";
  x_ = x;
  Tensor y(x.shape());
  GeluForward(x.data(), y.data(), x.numel());
  return y;
}

Tensor Gelu::Backward(const Tensor& dy) {
  CHECK_EQ(dy.numel(), x_.numel()) << "Gelu: dy " << dy.ShapeString() << " does not match x "
                                   << x_.ShapeString();
  CHECK(dy.device() == x_.device())
      << "Gelu: dy is on " << DeviceName(dy.device()) << ", the last Forward's input on "
      << DeviceName(x_.device());
#ifdef MOE_EP_HAS_CUDA
  if (dy.device() == Device::kCUDA) return BackwardCuda(dy);
#endif
  Tensor dx(x_.shape());
  GeluBackward(x_.data(), dy.data(), dx.data(), x_.numel());
  return dx;
}

}  // namespace moe
