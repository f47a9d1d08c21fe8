#include "models/layers/layer_norm.h"

#include <glog/logging.h>

namespace moe {

LayerNorm::LayerNorm(const std::string& name, int64_t dim, uint64_t seed, float eps)
    : name_(name), dim_(dim), eps_(eps) {
  CHECK_GT(dim, 0) << name << ": LayerNorm needs a positive dim";
  gamma_ = MakeParameter(name + ".gamma", {dim}, InitKind::kOnes, 0.f, seed);
  beta_ = MakeParameter(name + ".beta", {dim}, InitKind::kZeros, 0.f, seed);
}

Tensor LayerNorm::Forward(const Tensor& x) {
  CHECK(x.ndim() == 2 && x.dim(1) == dim_)
      << name_ << ": expected input [rows, " << dim_ << "], got " << x.ShapeString();
  CheckParametersOn(name_, gamma_, x.device());
  x_ = x;
  return BackendFor(x.device())
      .LayerNormForward(x, gamma_.value, beta_.value, eps_, &mean_, &rstd_);
}

Tensor LayerNorm::Backward(const Tensor& dy) {
  const int64_t rows = x_.dim(0);
  CHECK(dy.ndim() == 2 && dy.dim(0) == rows && dy.dim(1) == dim_)
      << name_ << ": expected dy [" << rows << ", " << dim_ << "], got " << dy.ShapeString();
  CheckSameDevice(name_, dy.device(), x_.device());
  return BackendFor(dy.device())
      .LayerNormBackward(x_, dy, gamma_.value, mean_, rstd_, &gamma_.grad, &beta_.grad);
}

}  // namespace moe
