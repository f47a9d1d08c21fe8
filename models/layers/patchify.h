// Patchify: images [B, C*S*S] (CHW, S = image_size) -> patches [B*T, C*p*p], no parameters.
//
// p x p patches taken every s pixels (s = stride, default p): g = (S - p) / s + 1 per side,
// T = g * g, element order (c, i, j) -> c*p*p + i*p + j, the same layout as PatchEmbed, so a
// Linear on the result is exactly a conv with kernel p and stride s (the first layer of pMoE's
// two-layer CNN). Unlike PatchEmbed it adds no position embedding: a CNN's filters are shared
// over positions, and pMoE's routers must choose patches by content, not by where they sit.
//
// Token order. With region_grid G = 1 (default) tokens are row-major, t = py * g + px. With
// G > 1 the g x g grid is cut into G x G regions of (g/G)^2 patches each and tokens are
// region-major: region (ry, rx) owns tokens (ry*G + rx) * (g/G)^2 .. + (g/G)^2 - 1, row-major
// inside the region. Each region's tokens are then contiguous, so "mean per region" is a plain
// MeanPoolTokens over (g/G)^2 tokens on any device; nothing else in the net depends on the order
// (the dense Mlp is per row, PATCH_TOP_L ranks all n patches of an image).
//
// Backward: with s = p patches do not overlap and it is the inverse permutation; with s < p a
// pixel lies in several patches and its gradient is the SUM of their entries.
//
// Devices: the default geometry (s = p, G = 1) runs through Backend::Patchify on either device.
// Overlapping patches or region order are host-only (a run-copy table); the config refuses them
// on device "cuda" (launcher/config.cc) and the layer CHECK-fails on a device tensor.
#pragma once

#include <vector>

#include "models/layers/layer.h"

namespace moe {

struct PatchifyOptions {
  int64_t stride = 0;       // 0 = patch size (non-overlapping)
  int64_t region_grid = 1;  // G: region-major token order for a G x G pooling of the grid
};

class Patchify : public Layer {
 public:
  Patchify(int64_t image_size, int64_t channels, int64_t patch_size,
           const PatchifyOptions& options = {});

  Tensor Forward(const Tensor& images) override;
  Tensor Backward(const Tensor& dpatches) override;  // -> d(images) [B, C*S*S]

  int64_t grid() const { return grid_; }  // patches per side, g
  int64_t tokens_per_image() const { return tokens_; }
  int64_t patch_dim() const { return patch_dim_; }
  // False when the default geometry runs through Backend::Patchify (both devices).
  bool host_only() const { return !run_offsets_.empty(); }

 private:
  PatchGeometry Geometry() const { return {channels_, image_size_, patch_}; }
  // Image offset (within one image) of row i of channel c of token t's patch, for every
  // (t, c, i) in that order: a patch is C * p runs of p contiguous pixels.
  void BuildRunOffsets(int64_t stride, int64_t region_grid);
  Tensor HostForward(const Tensor& images) const;
  Tensor HostBackward(const Tensor& dpatches) const;

  int64_t image_size_, channels_, patch_, grid_, tokens_, patch_dim_;
  std::vector<int64_t> run_offsets_;  // empty: the default geometry
  int64_t batch_ = 0;
  Device last_device_ = Device::kCPU;
};

}  // namespace moe
