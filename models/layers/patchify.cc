#include "models/layers/patchify.h"

#include <glog/logging.h>

#include <algorithm>

namespace moe {

Patchify::Patchify(int64_t image_size, int64_t channels, int64_t patch_size)
    : image_size_(image_size), channels_(channels), patch_(patch_size) {
  CHECK(image_size > 0 && patch_size > 0 && image_size % patch_size == 0)
      << "Patchify: image_size " << image_size << " must be a positive multiple of patch_size "
      << patch_size;
  CHECK_GT(channels, 0) << "Patchify: channels must be positive";
  grid_ = image_size / patch_size;
  tokens_ = grid_ * grid_;
  patch_dim_ = channels * patch_size * patch_size;
}

template <typename Fn>
void Patchify::ForEachRun(int64_t batch, Fn fn) const {
  const int64_t S = image_size_, p = patch_, plane = S * S;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < tokens_; ++t) {
      const int64_t py = t / grid_, px = t % grid_;
      for (int64_t c = 0; c < channels_; ++c)
        for (int64_t i = 0; i < p; ++i)
          fn(b * channels_ * plane + c * plane + (py * p + i) * S + px * p,
             (b * tokens_ + t) * patch_dim_ + (c * p + i) * p);
    }
}

Tensor Patchify::Forward(const Tensor& images) {
  const int64_t pixels = channels_ * image_size_ * image_size_;
  CHECK(images.ndim() == 2 && images.dim(1) == pixels)
      << "Patchify: expected images [B, " << pixels << "] (C*H*W), got " << images.ShapeString();
  batch_ = images.dim(0);
  last_device_ = images.device();
#ifdef MOE_EP_HAS_CUDA
  if (images.device() == Device::kCUDA) return ForwardCuda(images);
#endif
  CHECK(images.device() == Device::kCPU) << "Patchify: unsupported device";
  Tensor patches({batch_ * tokens_, patch_dim_});
  const float* in = images.data();
  float* out = patches.data();
  ForEachRun(batch_, [&](int64_t img, int64_t pat) {
    std::copy(in + img, in + img + patch_, out + pat);
  });
  return patches;
}

Tensor Patchify::Backward(const Tensor& dpatches) {
  CHECK(dpatches.ndim() == 2 && dpatches.dim(0) == batch_ * tokens_ &&
        dpatches.dim(1) == patch_dim_)
      << "Patchify: expected dpatches [" << batch_ * tokens_ << ", " << patch_dim_ << "], got "
      << dpatches.ShapeString();
  CHECK(dpatches.device() == last_device_)
      << "Patchify: dpatches on " << DeviceName(dpatches.device()) << ", the last Forward on "
      << DeviceName(last_device_);
#ifdef MOE_EP_HAS_CUDA
  if (dpatches.device() == Device::kCUDA) return BackwardCuda(dpatches);
#endif
  Tensor dimages({batch_, channels_ * image_size_ * image_size_});
  const float* in = dpatches.data();
  float* out = dimages.data();
  ForEachRun(batch_, [&](int64_t img, int64_t pat) {
    std::copy(in + pat, in + pat + patch_, out + img);
  });
  return dimages;
}

}  // namespace moe
