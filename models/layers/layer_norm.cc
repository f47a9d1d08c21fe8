#include "models/layers/layer_norm.h"

#include <glog/logging.h>

#include "core/kernels/cpu/layer_norm.h"

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
#ifdef MOE_EP_HAS_CUDA
  if (x.device() == Device::kCUDA) return ForwardCuda(x);
#endif
  CHECK(x.device() == Device::kCPU) << name_ << ": unsupported device";
  CHECK(gamma_.value.device() == Device::kCPU)
      << name_ << ": host input but parameters on " << DeviceName(gamma_.value.device());
  x_ = x;
  const int64_t rows = x.dim(0);
  mean_.resize(rows);
  rstd_.resize(rows);
  Tensor y({rows, dim_});
  LayerNormForward(x.data(), gamma_.value.data(), beta_.value.data(), rows, dim_, eps_, y.data(),
                   mean_.data(), rstd_.data());
  return y;
}

Tensor LayerNorm::Backward(const Tensor& dy) {
  const int64_t rows = x_.dim(0);
  CHECK(dy.ndim() == 2 && dy.dim(0) == rows && dy.dim(1) == dim_)
      << name_ << ": expected dy [" << rows << ", " << dim_ << "], got " << dy.ShapeString();
  CHECK(dy.device() == x_.device())
      << name_ << ": dy is on " << DeviceName(dy.device()) << ", the last Forward's input on "
      << DeviceName(x_.device());
#ifdef MOE_EP_HAS_CUDA
  if (dy.device() == Device::kCUDA) return BackwardCuda(dy);
#endif
  Tensor dx({rows, dim_});
  LayerNormBackward(x_.data(), dy.data(), gamma_.value.data(), mean_.data(), rstd_.data(), rows,
                    dim_, dx.data(), gamma_.grad.data(), beta_.grad.data());
  return dx;
}

}  // namespace moe
