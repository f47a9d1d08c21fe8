#include "models/layers/patch_embed.h"

#include <glog/logging.h>

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

Tensor PatchEmbed::Forward(const Tensor& images) {
  const int64_t pixels = channels_ * image_size_ * image_size_;
  CHECK(images.ndim() == 2 && images.dim(1) == pixels)
      << name_ << ": expected images [B, " << pixels << "] (C*H*W), got " << images.ShapeString();
  CheckParametersOn(name_, pos_, images.device());
  batch_ = images.dim(0);
  const Backend& be = BackendFor(images.device());
  Tensor y = proj_.Forward(be.Patchify(images, Geometry()));  // proj_ keeps the patches
  be.AddRowVector(&y, pos_.value);  // the same [T, D] position embedding for every image
  return y;
}

Tensor PatchEmbed::Backward(const Tensor& dy) {
  CHECK(dy.ndim() == 2 && dy.dim(0) == batch_ * tokens_ && dy.dim(1) == dim_)
      << name_ << ": expected dy [" << batch_ * tokens_ << ", " << dim_ << "], got "
      << dy.ShapeString();
  CHECK(dy.device() == pos_.grad.device())
      << name_ << ": dy is on " << DeviceName(dy.device()) << ", the parameters on "
      << DeviceName(pos_.grad.device());
  const Backend& be = BackendFor(dy.device());
  be.AccumulateColumnSums(dy, &pos_.grad);  // summed over the images
  return be.Unpatchify(proj_.Backward(dy), Geometry());
}

std::vector<Parameter*> PatchEmbed::Parameters() {
  std::vector<Parameter*> ps = proj_.Parameters();
  ps.push_back(&pos_);
  return ps;
}

}  // namespace moe
