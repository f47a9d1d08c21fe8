#include "models/layers/patch_embed.h"

#include <glog/logging.h>

#include <algorithm>
#include <vector>

namespace moe {

namespace {
int64_t CheckedGrid(const std::string& name, int64_t image_size, int64_t patch_size) {
  CHECK(image_size > 0 && patch_size > 0 && image_size % patch_size == 0)
      << name << ": image_size " << image_size << " must be a positive multiple of patch_size "
      << patch_size;
  return image_size / patch_size;
}
}  // namespace

PatchEmbed::PatchEmbed(const std::string& name, int64_t image_size, int64_t channels,
                       int64_t patch_size, int64_t dim, uint64_t seed)
    : name_(name),
      image_size_(image_size),
      channels_(channels),
      patch_(patch_size),
      dim_(dim),
      grid_(CheckedGrid(name, image_size, patch_size)),
      tokens_(grid_ * grid_),
      patch_dim_(channels * patch_size * patch_size),
      proj_(name + ".proj", channels * patch_size * patch_size, dim, seed) {
  CHECK_GT(channels, 0) << name << ": channels must be positive";
  pos_ = MakeParameter(name + ".pos_embed", {tokens_, dim}, InitKind::kNormal, 0.02f, seed);
}

void PatchEmbed::Im2Patch(const float* images, int64_t batch, float* patches) const {
  const int64_t S = image_size_, p = patch_, C = channels_;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t py = 0; py < grid_; ++py)
      for (int64_t px = 0; px < grid_; ++px) {
        float* out = patches + ((b * tokens_) + py * grid_ + px) * patch_dim_;
        for (int64_t c = 0; c < C; ++c)
          for (int64_t i = 0; i < p; ++i) {
            const float* row = images + b * C * S * S + c * S * S + (py * p + i) * S + px * p;
            std::copy(row, row + p, out + (c * p + i) * p);
          }
      }
}

void PatchEmbed::Patch2Im(const float* patches, int64_t batch, float* images) const {
  const int64_t S = image_size_, p = patch_, C = channels_;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t py = 0; py < grid_; ++py)
      for (int64_t px = 0; px < grid_; ++px) {
        const float* in = patches + ((b * tokens_) + py * grid_ + px) * patch_dim_;
        for (int64_t c = 0; c < C; ++c)
          for (int64_t i = 0; i < p; ++i) {
            float* row = images + b * C * S * S + c * S * S + (py * p + i) * S + px * p;
            std::copy(in + (c * p + i) * p, in + (c * p + i + 1) * p, row);
          }
      }
}

Tensor PatchEmbed::Forward(const Tensor& images) {
  const int64_t pixels = channels_ * image_size_ * image_size_;
  CHECK(images.ndim() == 2 && images.dim(1) == pixels)
      << name_ << ": expected images [B, " << pixels << "] (C*H*W), got " << images.ShapeString();
  batch_ = images.dim(0);
#ifdef MOE_EP_HAS_CUDA
  if (images.device() == Device::kCUDA) return ForwardCuda(images);
#endif
  CHECK(images.device() == Device::kCPU) << name_ << ": unsupported device";
  Tensor patches({batch_ * tokens_, patch_dim_});
  Im2Patch(images.data(), batch_, patches.data());
  Tensor y = proj_.Forward(patches);  // proj_ keeps `patches` for its weight gradient
  const float* pos = pos_.value.data();
  for (int64_t b = 0; b < batch_; ++b) {
    float* yb = y.data() + b * tokens_ * dim_;
    for (int64_t i = 0; i < tokens_ * dim_; ++i) yb[i] += pos[i];
  }
  return y;
}

Tensor PatchEmbed::Backward(const Tensor& dy) {
  CHECK(dy.ndim() == 2 && dy.dim(0) == batch_ * tokens_ && dy.dim(1) == dim_)
      << name_ << ": expected dy [" << batch_ * tokens_ << ", " << dim_ << "], got "
      << dy.ShapeString();
  CHECK(dy.device() == pos_.grad.device())
      << name_ << ": dy is on " << DeviceName(dy.device()) << ", the parameters on "
      << DeviceName(pos_.grad.device());
#ifdef MOE_EP_HAS_CUDA
  if (dy.device() == Device::kCUDA) return BackwardCuda(dy);
#endif
  std::vector<double> dpos(tokens_ * dim_, 0.0);
  for (int64_t b = 0; b < batch_; ++b) {
    const float* dyb = dy.data() + b * tokens_ * dim_;
    for (int64_t i = 0; i < tokens_ * dim_; ++i) dpos[i] += dyb[i];
  }
  for (int64_t i = 0; i < tokens_ * dim_; ++i) pos_.grad.data()[i] += static_cast<float>(dpos[i]);
  const Tensor dpatches = proj_.Backward(dy);
  Tensor dimages({batch_, channels_ * image_size_ * image_size_});
  Patch2Im(dpatches.data(), batch_, dimages.data());
  return dimages;
}

std::vector<Parameter*> PatchEmbed::Parameters() {
  std::vector<Parameter*> ps = proj_.Parameters();
  ps.push_back(&pos_);
  return ps;
}

}  // namespace moe
