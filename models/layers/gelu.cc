#include "models/layers/gelu.h"

#include <glog/logging.h>

namespace moe {

Tensor Gelu::Forward(const Tensor& x) { return BackendFor(x.device()).GeluForward(x, &saved_); }

Tensor Gelu::Backward(const Tensor& dy) {
  CHECK_EQ(dy.numel(), saved_.numel()) << "Gelu: dy " << dy.ShapeString()
                                       << " does not match x " << saved_.ShapeString();
  CheckSameDevice("Gelu", dy.device(), saved_.device());
  return BackendFor(dy.device()).GeluBackward(saved_, dy);
}

}  // namespace moe
