#include "models/layers/mean_pool.h"

#include <glog/logging.h>

namespace moe {

MeanPoolTokens::MeanPoolTokens(int64_t tokens_per_image) : tokens_(tokens_per_image) {
  CHECK_GT(tokens_per_image, 0) << "MeanPoolTokens: tokens_per_image must be positive";
}

Tensor MeanPoolTokens::Forward(const Tensor& x) {
  CHECK(x.ndim() == 2 && x.dim(0) % tokens_ == 0)
      << "MeanPoolTokens: expected [B*" << tokens_ << ", D], got " << x.ShapeString();
  batch_ = x.dim(0) / tokens_;
  dim_ = x.dim(1);
  last_device_ = x.device();
  return BackendFor(x.device()).MeanPoolTokensForward(x, tokens_);
}

Tensor MeanPoolTokens::Backward(const Tensor& dy) {
  CHECK(dy.ndim() == 2 && dy.dim(0) == batch_ && dy.dim(1) == dim_)
      << "MeanPoolTokens: expected dy [" << batch_ << ", " << dim_ << "], got "
      << dy.ShapeString();
  CheckSameDevice("MeanPoolTokens", dy.device(), last_device_);
  return BackendFor(dy.device()).MeanPoolTokensBackward(dy, tokens_);
}

}  // namespace moe
