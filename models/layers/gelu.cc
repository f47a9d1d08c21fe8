#include "models/layers/gelu.h"

#include <glog/logging.h>

namespace moe {

Tensor Gelu::Forward(const Tensor& x) {
  x_ = x;
  return BackendFor(x.device()).GeluForward(x);
}

Tensor Gelu::Backward(const Tensor& dy) {
  CHECK_EQ(dy.numel(), x_.numel()) << "Gelu: dy " << dy.ShapeString() << " does not match x "
                                   << x_.ShapeString();
  CheckSameDevice("Gelu", dy.device(), x_.device());
  return BackendFor(dy.device()).GeluBackward(x_, dy);
}

}  // namespace moe
