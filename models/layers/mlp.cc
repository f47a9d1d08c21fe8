#include "models/layers/mlp.h"

namespace moe {

Mlp::Mlp(const std::string& name, int64_t dim, int64_t hidden, uint64_t seed)
    : fc1_(name + ".fc1", dim, hidden, seed), fc2_(name + ".fc2", hidden, dim, seed) {}

Tensor Mlp::Forward(const Tensor& x) { return fc2_.Forward(act_.Forward(fc1_.Forward(x))); }

Tensor Mlp::Backward(const Tensor& dy) {
  return fc1_.Backward(act_.Backward(fc2_.Backward(dy)));
}

std::vector<Parameter*> Mlp::Parameters() {
  std::vector<Parameter*> ps = fc1_.Parameters();
  for (Parameter* p : fc2_.Parameters()) ps.push_back(p);
  return ps;
}

}  // namespace moe
