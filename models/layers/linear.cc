#include "models/layers/linear.h"

#include <glog/logging.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/gemm.h"

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
#ifdef MOE_EP_HAS_CUDA
  if (x.device() == Device::kCUDA) return ForwardCuda(x);
#endif
  CHECK(x.device() == Device::kCPU) << name_ << ": unsupported device";
  CHECK(w_.value.device() == Device::kCPU)
      << name_ << ": host input but parameters on " << DeviceName(w_.value.device());
  x_ = x;
  const int64_t rows = x.dim(0);
  Tensor y({rows, out_});
  float* yd = y.data();
  if (has_bias_) {
    const float* b = b_.value.data();
    for (int64_t r = 0; r < rows; ++r) std::copy(b, b + out_, yd + r * out_);
  }
  SgemmPacked(false, false, rows, out_, in_, 1.f, x.data(), w_.value.data(),
              has_bias_ ? 1.f : 0.f, yd);
  return y;
}

Tensor Linear::Backward(const Tensor& dy) {
  const int64_t rows = x_.dim(0);
  CHECK(dy.ndim() == 2 && dy.dim(0) == rows && dy.dim(1) == out_)
      << name_ << ": expected dy [" << rows << ", " << out_ << "], got " << dy.ShapeString();
  CHECK(dy.device() == x_.device())
      << name_ << ": dy is on " << DeviceName(dy.device()) << ", the last Forward's input on "
      << DeviceName(x_.device());
#ifdef MOE_EP_HAS_CUDA
  if (dy.device() == Device::kCUDA) return BackwardCuda(dy);
#endif
  // dW += x^T dy (beta = 1 accumulates).
  SgemmPacked(true, false, in_, out_, rows, 1.f, x_.data(), dy.data(), 1.f, w_.grad.data());
  if (has_bias_) {
    std::vector<double> db(out_, 0.0);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < out_; ++j) db[j] += dy.data()[r * out_ + j];
    for (int64_t j = 0; j < out_; ++j) b_.grad.data()[j] += static_cast<float>(db[j]);
  }
  Tensor dx({rows, in_});
  SgemmPacked(false, true, rows, in_, out_, 1.f, dy.data(), w_.value.data(), 0.f, dx.data());
  return dx;
}

std::vector<Parameter*> Linear::Parameters() {
  if (has_bias_) return {&w_, &b_};
  return {&w_};
}

}  // namespace moe
