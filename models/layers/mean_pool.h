// MeanPoolTokens: [B*T, D] -> [B, D], the mean over each image's T contiguous tokens.
// The ViT head pools globally instead of reading a class token: simpler (no extra token, no
// special position), and V-MoE / "Scaling ViT" report equal quality with global average pooling.
#pragma once

#include "models/layers/layer.h"

namespace moe {

class MeanPoolTokens : public Layer {
 public:
  explicit MeanPoolTokens(int64_t tokens_per_image);

  Tensor Forward(const Tensor& x) override;
  Tensor Backward(const Tensor& dy) override;  // dx [B*T, D] = dy[b] / T for each token of b

 private:
  int64_t tokens_;
  int64_t batch_ = 0, dim_ = 0;
  Device last_device_ = Device::kCPU;  // the last Forward's input device
};

}  // namespace moe
