// Linear: y = x W + b, x [rows, in], W [in, out], b [out].
//
// Init: W xavier-uniform U(-a, a), a = sqrt(6 / (in + out)), b zeros -- what the reference ViT /
// V-MoE code (flax) uses for its Dense layers. Unlike a fixed std 0.02, it keeps the activation
// scale independent of the width, which matters for the narrow (dim 32..128) models we train.
// A caller wanting another init (e.g. a zero head) overwrites weight()->value after construction.
#pragma once

#include <string>
#include <vector>

#include "models/layers/layer.h"

namespace moe {

class Linear : public Layer {
 public:
  // Parameters: name + ".w" [in, out], name + ".b" [out] (when bias).
  Linear(const std::string& name, int64_t in, int64_t out, uint64_t seed, bool bias = true);

  // Keeps x (shared buffer, no copy) for Backward: do not overwrite x in place before Backward.
  Tensor Forward(const Tensor& x) override;
  Tensor Backward(const Tensor& dy) override;
  std::vector<Parameter*> Parameters() override;

  Parameter* weight() { return &w_; }
  Parameter* bias() { return has_bias_ ? &b_ : nullptr; }
  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }

 private:
  std::string name_;
  int64_t in_, out_;
  bool has_bias_;
  Parameter w_, b_;
  Tensor x_;
};

}  // namespace moe
