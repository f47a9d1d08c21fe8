#include "models/layers/linear.h"

#include <glog/logging.h>

#include <cmath>

namespace moe {

Linear::Linear(const std::string& name, int64_t in, int64_t out, uint64_t seed, bool bias)
    : name_(name), in_(in), out_(out), has_bias_(bias) {
  CHECK(in > 0 && out > 0) << name << ": Linear needs positive sizes, got " << in << " -> " << out;
  const float limit = static_cast<float>(std::sqrt(6.0 / static_cast<double>(in + out)));
  w_ = MakeParameter(name + ".w", {in, out}, InitKind::kUniformFanIn, limit, seed);
  if (has_bias_) b_ = MakeParameter(name + ".b", {out}, InitKind::kZeros, 0.f, seed);
}

Tensor Linear::Forward(const Tensor& x) {
  CHECK(x.ndim() == 2 && x.dim(1) == in_)
      << name_ << ": expected input [rows, " << in_ << "], got " << x.ShapeString();
  CheckParametersOn(name_, w_, x.device());
  x_ = x;
  return BackendFor(x.device()).LinearForward(x, w_.value, has_bias_ ? &b_.value : nullptr);
}

Tensor Linear::Backward(const Tensor& dy) {
  const int64_t rows = x_.dim(0);
  CHECK(dy.ndim() == 2 && dy.dim(0) == rows && dy.dim(1) == out_)
      << name_ << ": expected dy [" << rows << ", " << out_ << "], got " << dy.ShapeString();
  CheckSameDevice(name_, dy.device(), x_.device());
  return BackendFor(dy.device())
      .LinearBackward(x_, dy, w_.value, &w_.grad, has_bias_ ? &b_.grad : nullptr);
}

std::vector<Parameter*> Linear::Parameters() {
  if (has_bias_) return {&w_, &b_};
  return {&w_};
}

}  // namespace moe
