#include "models/layers/gelu.h"

#include <glog/logging.h>

#include "core/kernels/cpu/gelu.h"

namespace moe {

Tensor Gelu::Forward(const Tensor& x) {
  CHECK(x.device() == Device::kCPU) << "Gelu runs on host tensors only";
  x_ = x;
  Tensor y(x.shape());
  GeluForward(x.data(), y.data(), x.numel());
  return y;
}

Tensor Gelu::Backward(const Tensor& dy) {
  CHECK_EQ(dy.numel(), x_.numel()) << "Gelu: dy " << dy.ShapeString() << " does not match x "
                                   << x_.ShapeString();
  Tensor dx(x_.shape());
  GeluBackward(x_.data(), dy.data(), dx.data(), x_.numel());
  return dx;
}

}  // namespace moe
