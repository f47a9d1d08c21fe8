#include "models/layers/mean_pool.h"

#include <glog/logging.h>

#include <algorithm>
#include <vector>

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
#ifdef MOE_EP_HAS_CUDA
  if (x.device() == Device::kCUDA) return ForwardCuda(x);
#endif
  CHECK(x.device() == Device::kCPU) << "MeanPoolTokens: unsupported device";
  Tensor y({batch_, dim_});
  std::vector<double> acc(dim_);
  for (int64_t b = 0; b < batch_; ++b) {
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int64_t t = 0; t < tokens_; ++t) {
      const float* row = x.data() + (b * tokens_ + t) * dim_;
      for (int64_t j = 0; j < dim_; ++j) acc[j] += row[j];
    }
    for (int64_t j = 0; j < dim_; ++j)
      y.data()[b * dim_ + j] = static_cast<float>(acc[j] / tokens_);
  }
  return y;
}

Tensor MeanPoolTokens::Backward(const Tensor& dy) {
  CHECK(dy.ndim() == 2 && dy.dim(0) == batch_ && dy.dim(1) == dim_)
      << "MeanPoolTokens: expected dy [" << batch_ << ", " << dim_ << "], got "
      << dy.ShapeString();
  CHECK(dy.device() == last_device_)
      << "MeanPoolTokens: dy is on " << DeviceName(dy.device())
      << ", the last Forward's input on " << DeviceName(last_device_);
#ifdef MOE_EP_HAS_CUDA
  if (dy.device() == Device::kCUDA) return BackwardCuda(dy);
#endif
  Tensor dx({batch_ * tokens_, dim_});
  const float inv = 1.f / static_cast<float>(tokens_);
  for (int64_t b = 0; b < batch_; ++b)
    for (int64_t t = 0; t < tokens_; ++t)
      for (int64_t j = 0; j < dim_; ++j)
        dx.data()[(b * tokens_ + t) * dim_ + j] = dy.data()[b * dim_ + j] * inv;
  return dx;
}

}  // namespace moe
