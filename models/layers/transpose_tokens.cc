#include "models/layers/transpose_tokens.h"

#include <glog/logging.h>

namespace moe {

TransposeTokens::TransposeTokens(int64_t tokens_per_image) : tokens_(tokens_per_image) {
  CHECK_GT(tokens_per_image, 0) << "TransposeTokens: tokens_per_image must be positive";
}

Tensor TransposeTokens::Forward(const Tensor& x) {
  CHECK(x.ndim() == 2 && x.dim(0) % tokens_ == 0)
      << "TransposeTokens: expected [B*" << tokens_ << ", D], got " << x.ShapeString();
  batch_ = x.dim(0) / tokens_;
  dim_ = x.dim(1);
  last_device_ = x.device();
  return BackendFor(x.device()).TransposeBlocks(x, batch_, tokens_, dim_);
}

Tensor TransposeTokens::Backward(const Tensor& dy) {
  CHECK(dy.ndim() == 2 && dy.dim(0) == batch_ * dim_ && dy.dim(1) == tokens_)
      << "TransposeTokens: expected dy [" << batch_ * dim_ << ", " << tokens_ << "], got "
      << dy.ShapeString();
  CheckSameDevice("TransposeTokens", dy.device(), last_device_);
  return BackendFor(dy.device()).TransposeBlocks(dy, batch_, dim_, tokens_);
}

}  // namespace moe
