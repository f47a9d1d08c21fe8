#include "models/layers/patchify.h"

#include <glog/logging.h>

#include <algorithm>

namespace moe {

Patchify::Patchify(int64_t image_size, int64_t channels, int64_t patch_size,
                   const PatchifyOptions& options)
    : image_size_(image_size), channels_(channels), patch_(patch_size) {
  const int64_t s = options.stride == 0 ? patch_size : options.stride;
  const int64_t G = options.region_grid;
  CHECK(image_size > 0 && patch_size > 0 && patch_size <= image_size)
      << "Patchify: patch_size " << patch_size << " must be in [1, image_size " << image_size
      << "]";
  CHECK(s >= 1 && s <= patch_size && (image_size - patch_size) % s == 0)
      << "Patchify: stride " << s << " must be in [1, patch_size " << patch_size
      << "] and divide image_size - patch_size = " << image_size - patch_size;
  CHECK_GT(channels, 0) << "Patchify: channels must be positive";
  grid_ = (image_size - patch_size) / s + 1;
  CHECK(G >= 1 && grid_ % G == 0)
      << "Patchify: region_grid " << G << " must be >= 1 and divide the grid " << grid_;
  tokens_ = grid_ * grid_;
  patch_dim_ = channels * patch_size * patch_size;
  if (s != patch_size || G != 1) BuildRunOffsets(s, G);
}

void Patchify::BuildRunOffsets(int64_t stride, int64_t region_grid) {
  const int64_t side = grid_ / region_grid, plane = image_size_ * image_size_;
  run_offsets_.resize(tokens_ * channels_ * patch_);
  int64_t k = 0;
  for (int64_t t = 0; t < tokens_; ++t) {
    // t = region * side^2 + local, both row-major (patchify.h); G = 1 gives t = py * g + px.
    const int64_t region = t / (side * side), local = t % (side * side);
    const int64_t py = (region / region_grid) * side + local / side;
    const int64_t px = (region % region_grid) * side + local % side;
    for (int64_t c = 0; c < channels_; ++c)
      for (int64_t i = 0; i < patch_; ++i)
        run_offsets_[k++] = c * plane + (py * stride + i) * image_size_ + px * stride;
  }
}

Tensor Patchify::HostForward(const Tensor& images) const {
  const int64_t pixels = channels_ * image_size_ * image_size_;
  const int64_t runs = static_cast<int64_t>(run_offsets_.size());
  Tensor patches({batch_ * tokens_, patch_dim_});
  const float* in = images.data();
  float* out = patches.data();
  for (int64_t b = 0; b < batch_; ++b) {
    const float* image = in + b * pixels;
    float* dst = out + b * runs * patch_;  // an image's patches: `runs` runs of p floats
    for (int64_t r = 0; r < runs; ++r)
      std::copy(image + run_offsets_[r], image + run_offsets_[r] + patch_, dst + r * patch_);
  }
  return patches;
}

Tensor Patchify::HostBackward(const Tensor& dpatches) const {
  const int64_t pixels = channels_ * image_size_ * image_size_;
  const int64_t runs = static_cast<int64_t>(run_offsets_.size());
  Tensor dimages({batch_, pixels});
  dimages.Zero();
  const float* in = dpatches.data();
  float* out = dimages.data();
  for (int64_t b = 0; b < batch_; ++b) {
    float* dimage = out + b * pixels;
    const float* src = in + b * runs * patch_;
    // Overlapping patches share pixels: their gradients add, in token order.
    for (int64_t r = 0; r < runs; ++r)
      for (int64_t j = 0; j < patch_; ++j) dimage[run_offsets_[r] + j] += src[r * patch_ + j];
  }
  return dimages;
}

Tensor Patchify::Forward(const Tensor& images) {
  const int64_t pixels = channels_ * image_size_ * image_size_;
  CHECK(images.ndim() == 2 && images.dim(1) == pixels)
      << "Patchify: expected images [B, " << pixels << "] (C*H*W), got " << images.ShapeString();
  batch_ = images.dim(0);
  last_device_ = images.device();
  if (!host_only()) return BackendFor(images.device()).Patchify(images, Geometry());
  CHECK(images.device() == Device::kCPU)
      << "Patchify: overlapping patches (stride < patch size) and region order run on the host "
         "only; the input is on "
      << DeviceName(images.device());
  return HostForward(images);
}

Tensor Patchify::Backward(const Tensor& dpatches) {
  CHECK(dpatches.ndim() == 2 && dpatches.dim(0) == batch_ * tokens_ &&
        dpatches.dim(1) == patch_dim_)
      << "Patchify: expected dpatches [" << batch_ * tokens_ << ", " << patch_dim_ << "], got "
      << dpatches.ShapeString();
  CheckSameDevice("Patchify", dpatches.device(), last_device_);
  if (!host_only()) return BackendFor(dpatches.device()).Unpatchify(dpatches, Geometry());
  return HostBackward(dpatches);
}

}  // namespace moe
