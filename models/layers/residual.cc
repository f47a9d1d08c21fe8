#include "models/layers/residual.h"

#include <glog/logging.h>

namespace moe {

Residual::Residual(std::vector<std::unique_ptr<Layer>> branch) : branch_(std::move(branch)) {
  // An empty branch would make the output alias the input (y = x + x in x's own buffer).
  CHECK(!branch_.empty()) << "Residual: the branch needs at least one layer";
  for (const auto& l : branch_) CHECK(l != nullptr) << "Residual: null branch layer";
}

void Residual::AddInPlace(Tensor* a, const Tensor& b) {
  CHECK(a->shape() == b.shape()) << "Residual: the branch maps " << b.ShapeString() << " to "
                                 << a->ShapeString() << "; a residual needs the same shape";
  CHECK(a->device() == b.device()) << "Residual: add across devices";
  CHECK(a->data() != b.data()) << "Residual: the branch returned its input's buffer";
  BackendFor(a->device()).AddInPlace(a, b);
}

Tensor Residual::Forward(const Tensor& x) {
  x_shape_ = x.shape();
  Tensor h = x;
  for (auto& l : branch_) h = l->Forward(h);
  AddInPlace(&h, x);
  return h;
}

Tensor Residual::Backward(const Tensor& dy) {
  CHECK(dy.shape() == x_shape_) << "Residual: expected dy of the input's shape, got "
                                << dy.ShapeString();
  Tensor dh = dy;
  for (auto it = branch_.rbegin(); it != branch_.rend(); ++it) dh = (*it)->Backward(dh);
  AddInPlace(&dh, dy);
  return dh;
}

std::vector<Parameter*> Residual::Parameters() {
  std::vector<Parameter*> ps;
  for (auto& l : branch_)
    for (Parameter* p : l->Parameters()) ps.push_back(p);
  return ps;
}

void Residual::MoveTo(Device d) {
  for (auto& l : branch_) l->MoveTo(d);
}

}  // namespace moe
