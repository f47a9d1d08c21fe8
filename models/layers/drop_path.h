// DropPath (stochastic depth, Huang et al. 2016): the last layer of a residual branch that, in
// training, drops the whole branch output of some images and rescales the rest:
//   y[image b] = x[image b] * m_b / (1 - rate),   m_b = 1 with probability 1 - rate, else 0,
// so that E[y] = x; at evaluation (and at rate 0) y = x. Backward: dx = dy * m_b / (1 - rate).
//
// The rows of x are grouped by image (a ViT's tokens [B*T, D], a Mixer's [B*S, C]): image b owns
// elements [b * n / B, (b + 1) * n / B) of the n elements, B = DropPathContext::batch_images.
// m_b is a pure function of (step key, residual index, global image index) through the counter
// RNG (core/rng.h), so every EP x DP layout draws the same mask for the same image.
//
// The net owns one DropPathContext (net.h) and sets it before every Forward (the trainer:
// training flag, step, this rank's first global image); its DropPath layers read it. The masks
// are drawn on the host; the scaling runs on the tensor's device (Backend::ScaleSegments).
#pragma once

#include <cstdint>
#include <vector>

#include "models/layers/layer.h"

namespace moe {

struct DropPathContext {
  bool training = false;
  uint64_t step_key = 0;     // DropPathStepKey(seed, step)
  int64_t first_image = 0;   // global index of this rank's first image in the step's batch
  int64_t batch_images = 0;  // images in this rank's batch
};

// The key of one training step's masks.
uint64_t DropPathStepKey(uint64_t seed, int64_t step);
// Stochastic depth's linear rule: block i of `blocks` drops with rate * i / (blocks - 1) (0 in
// the first block, the full rate in the last); a single block takes the full rate.
float DropPathRateOfBlock(float rate, int block, int blocks);
// Whether residual `residual` keeps image `image` at this step (probability 1 - rate).
bool DropPathKeeps(uint64_t step_key, int residual, int64_t image, float rate);

class DropPath : public Layer {
 public:
  // residual: the net-wide index of the residual this layer ends (part of the mask's key).
  // context: owned by the net, read at every Forward.
  DropPath(float rate, int residual, const DropPathContext* context);

  Tensor Forward(const Tensor& x) override;
  Tensor Backward(const Tensor& dy) override;

  float rate() const { return rate_; }
  // Per image of the last training Forward: 0 (dropped) or 1 / (1 - rate) (kept); empty after
  // an identity Forward (evaluation).
  const std::vector<float>& image_scales() const { return scales_; }

 private:
  float rate_;
  int residual_;
  const DropPathContext* context_;
  std::vector<float> scales_;
  // scales_ on the device of the last training Forward's input: uploaded once per step, read by
  // Forward and Backward.
  Tensor scales_on_device_;
};

}  // namespace moe
