// LayerNorm over the feature dimension of [rows, dim], eps 1e-6 (the ViT value).
// Parameters: name + ".gamma" (ones), name + ".beta" (zeros). AdamW skips decay for names that
// contain "norm" or "ln", so give the layer such a prefix ("block0.ln1", "final_norm").
#pragma once

#include <string>
#include <vector>

#include "models/layers/layer.h"

namespace moe {

class LayerNorm : public Layer {
 public:
  LayerNorm(const std::string& name, int64_t dim, uint64_t seed, float eps = 1e-6f);

  // Keeps x (shared buffer, no copy) for Backward: do not overwrite x in place before Backward.
  Tensor Forward(const Tensor& x) override;
  Tensor Backward(const Tensor& dy) override;
  std::vector<Parameter*> Parameters() override { return {&gamma_, &beta_}; }

  Parameter* gamma() { return &gamma_; }
  Parameter* beta() { return &beta_; }

 private:
  std::string name_;
  int64_t dim_;
  float eps_;
  Parameter gamma_, beta_;
  Tensor x_;
  Tensor mean_, rstd_;  // [rows] statistics of the last Forward, on its device
};

}  // namespace moe
