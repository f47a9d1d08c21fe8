#include "launcher/augmentation.h"

#include <glog/logging.h>

#include <algorithm>
#include <vector>

#include "core/rng.h"
#include "models/nets/fashion_mnist.h"

namespace moe {

AugmentOptions AugmentOptionsFromConfig(const proto::TrainConfig& config) {
  AugmentOptions o;
  o.crop_padding = config.recipe().crop_padding();
  o.horizontal_flip = config.recipe().horizontal_flip();
  o.image_size = config.model().image_size();
  o.channels = config.model().channels();
  o.background = (0.f - kFashionMnistMean) / kFashionMnistStd;
  return o;
}

AugmentDraw DrawAugmentation(const AugmentOptions& o, uint64_t seed, int64_t step,
                             int64_t global_index) {
  const CounterRng rng(MixKey(MixKey(seed, HashString("augment")), static_cast<uint64_t>(step)));
  const auto index = static_cast<uint64_t>(global_index);
  AugmentDraw d;
  // floor(u * (2P + 1)) for u in (0, 1) lies in [0, 2P]; the min guards float rounding at u ~ 1.
  const int span = 2 * o.crop_padding + 1;
  d.offset_x = std::min(span - 1, static_cast<int>(rng.Uniform(index, 0) * span));
  d.offset_y = std::min(span - 1, static_cast<int>(rng.Uniform(index, 1) * span));
  d.flip = o.horizontal_flip && rng.Uniform(index, 2) < 0.5f;
  if (o.crop_padding == 0) d.offset_x = d.offset_y = 0;
  return d;
}

void AugmentImage(const AugmentOptions& o, const AugmentDraw& d, const float* in, float* out) {
  const int S = o.image_size, P = o.crop_padding;
  for (int c = 0; c < o.channels; ++c) {
    const float* src = in + static_cast<int64_t>(c) * S * S;
    float* dst = out + static_cast<int64_t>(c) * S * S;
    for (int y = 0; y < S; ++y) {
      const int sy = y + d.offset_y - P;
      for (int x = 0; x < S; ++x) {
        const int cx = d.flip ? S - 1 - x : x;  // the flip reads the crop mirrored
        const int sx = cx + d.offset_x - P;
        const bool inside = sy >= 0 && sy < S && sx >= 0 && sx < S;
        dst[y * S + x] = inside ? src[sy * S + sx] : o.background;
      }
    }
  }
}

void AugmentBatch(const AugmentOptions& o, uint64_t seed, int64_t step, int64_t first_index,
                  Tensor* images) {
  if (!o.any()) return;
  CHECK(images->device() == Device::kCPU) << "augmentation works on the host batch";
  const int64_t pixels = static_cast<int64_t>(o.channels) * o.image_size * o.image_size;
  CHECK(images->ndim() == 2 && images->dim(1) == pixels)
      << "augmentation: images " << images->ShapeString() << " are not [B, " << pixels << "]";
  std::vector<float> scratch(static_cast<size_t>(pixels));
  for (int64_t i = 0; i < images->dim(0); ++i) {
    float* row = images->data() + i * pixels;
    std::copy(row, row + pixels, scratch.begin());
    AugmentImage(o, DrawAugmentation(o, seed, step, first_index + i), scratch.data(), row);
  }
}

}  // namespace moe
