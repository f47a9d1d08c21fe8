#include "models/layers/patchify.h"

#include <glog/logging.h>

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

Tensor Patchify::Forward(const Tensor& images) {
  const int64_t pixels = channels_ * image_size_ * image_size_;
  CHECK(images.ndim() == 2 && images.dim(1) == pixels)
      << "Patchify: expected images [B, " << pixels << "] (C*H*W), got " << images.ShapeString();
  batch_ = images.dim(0);
  last_device_ = images.device();
  return BackendFor(images.device()).Patchify(images, Geometry());
}

Tensor Patchify::Backward(const Tensor& dpatches) {
  CHECK(dpatches.ndim() == 2 && dpatches.dim(0) == batch_ * tokens_ &&
        dpatches.dim(1) == patch_dim_)
      << "Patchify: expected dpatches [" << batch_ * tokens_ << ", " << patch_dim_ << "], got "
      << dpatches.ShapeString();
  CheckSameDevice("Patchify", dpatches.device(), last_device_);
  return BackendFor(dpatches.device()).Unpatchify(dpatches, Geometry());
}

}  // namespace moe
