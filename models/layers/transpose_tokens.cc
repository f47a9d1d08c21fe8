#include "models/layers/transpose_tokens.h"

#include <glog/logging.h>

namespace moe {

namespace {
// out[b, c, r] = in[b, r, c] for in [batch, rows, cols].
void TransposeBlocks(const float* in, int64_t batch, int64_t rows, int64_t cols, float* out) {
  for (int64_t b = 0; b < batch; ++b) {
    const float* src = in + b * rows * cols;
    float* dst = out + b * rows * cols;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) dst[c * rows + r] = src[r * cols + c];
  }
}
}  // namespace

TransposeTokens::TransposeTokens(int64_t tokens_per_image) : tokens_(tokens_per_image) {
  CHECK_GT(tokens_per_image, 0) << "TransposeTokens: tokens_per_image must be positive";
}

Tensor TransposeTokens::Forward(const Tensor& x) {
  CHECK(x.ndim() == 2 && x.dim(0) % tokens_ == 0)
      << "TransposeTokens: expected [B*" << tokens_ << ", D], got " << x.ShapeString();
  batch_ = x.dim(0) / tokens_;
  dim_ = x.dim(1);
  last_device_ = x.device();
#ifdef MOE_EP_HAS_CUDA
  if (x.device() == Device::kCUDA) return ForwardCuda(x);
#endif
  CHECK(x.device() == Device::kCPU) << "TransposeTokens: unsupported device";
  Tensor y({batch_ * dim_, tokens_});
  TransposeBlocks(x.data(), batch_, tokens_, dim_, y.data());
  return y;
}

Tensor TransposeTokens::Backward(const Tensor& dy) {
  CHECK(dy.ndim() == 2 && dy.dim(0) == batch_ * dim_ && dy.dim(1) == tokens_)
      << "TransposeTokens: expected dy [" << batch_ * dim_ << ", " << tokens_ << "], got "
      << dy.ShapeString();
  CHECK(dy.device() == last_device_)
      << "TransposeTokens: dy is on " << DeviceName(dy.device())
      << ", the last Forward's input on " << DeviceName(last_device_);
#ifdef MOE_EP_HAS_CUDA
  if (dy.device() == Device::kCUDA) return BackwardCuda(dy);
#endif
  Tensor dx({batch_ * tokens_, dim_});
  TransposeBlocks(dy.data(), batch_, dim_, tokens_, dx.data());
  return dx;
}

}  // namespace moe
