// Mlp: the dense ViT MLP block, fc1 [dim, hidden] -> exact GELU -> fc2 [hidden, dim].
// Parameters: name + ".fc1.w/.b", name + ".fc2.w/.b".
#pragma once

#include <string>
#include <vector>

#include "models/layers/gelu.h"
#include "models/layers/layer.h"
#include "models/layers/linear.h"

namespace moe {

class Mlp : public Layer {
 public:
  Mlp(const std::string& name, int64_t dim, int64_t hidden, uint64_t seed);

  Tensor Forward(const Tensor& x) override;
  Tensor Backward(const Tensor& dy) override;
  std::vector<Parameter*> Parameters() override;  // fc1.w, fc1.b, fc2.w, fc2.b

  Linear* fc1() { return &fc1_; }
  Linear* fc2() { return &fc2_; }

 private:
  Linear fc1_;
  Gelu act_;
  Linear fc2_;
};

}  // namespace moe
