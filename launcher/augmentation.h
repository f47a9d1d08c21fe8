// Training-image augmentation (recipe.crop_padding, recipe.horizontal_flip): a random crop of the
// zero-padded image and a random horizontal flip, applied to training batches only (never the
// test set) right after they are gathered (launcher/train_loop.cc).
//
// Random crop with padding P: the S x S image is padded by P black pixels on every side and an
// S x S window is cut at offset (ox, oy), each uniform in [0, 2P]:
//   out[c][y][x] = in[c][y + oy - P][x + ox - P], black outside the image.
// Black is the normalised value of a 0 pixel, -mean / std (launcher/idx_dataset.h normalises
// before augmentation). Horizontal flip (probability 0.5), after the crop: out[c][y][x] =
// cropped[c][y][S - 1 - x].
//
// Every draw is a pure function of (seed, step, global index of the image in the step's global
// batch) through the counter RNG (core/rng.h), so a batch split over P ranks is augmented exactly
// as the whole batch on one rank.
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "proto/moe_ep.pb.h"

namespace moe {

struct AugmentOptions {
  int crop_padding = 0;          // P; 0 = no crop
  bool horizontal_flip = false;
  int image_size = 28;           // S
  int channels = 1;
  float background = 0.f;        // the padding value, in the images' (normalised) units

  bool any() const { return crop_padding > 0 || horizontal_flip; }
};

// What one image gets: the crop window's offset in the padded image, and the flip.
struct AugmentDraw {
  int offset_x = 0, offset_y = 0;
  bool flip = false;
};

// The recipe's options for the model's image geometry, background = Fashion-MNIST's black.
AugmentOptions AugmentOptionsFromConfig(const proto::TrainConfig& config);

// The draw of the image at `global_index` of step `step`'s global batch.
AugmentDraw DrawAugmentation(const AugmentOptions& o, uint64_t seed, int64_t step,
                             int64_t global_index);

// One image [C*S*S] (CHW) through a given draw: out must not alias in.
void AugmentImage(const AugmentOptions& o, const AugmentDraw& d, const float* in, float* out);

// Augments images [B, C*S*S] (host) in place; row i is image first_index + i of the step's
// global batch. Nothing happens when !o.any().
void AugmentBatch(const AugmentOptions& o, uint64_t seed, int64_t step, int64_t first_index,
                  Tensor* images);

}  // namespace moe
