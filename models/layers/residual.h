// Residual: y = x + f(x), f a branch of layers applied in order (f_n(...f_1(x))); Backward runs
// the branch in reverse and adds the skip path: dx = f'(dy) + dy.
//
// The MLP-Mixer's units are all of this form (LN, transposes, MLPs or MoE layers, re-represent
// maps), and Sparse-MLP's re_represent_both nests residuals inside a branch. The sum is written
// into the branch's output (forward) and the branch's dx (backward), no extra copy: that relies
// on the layer contract as every layer here keeps it -- a layer may keep its INPUT for Backward,
// never the tensor it returns -- so both are the residual's own to overwrite.
//
// Devices: runs where x is; the add is the backend's AddInPlace (core/backend.h), the branch
// layers take their own. MoveTo moves every branch layer with its own MoveTo (MoE
// layers carry device state beyond their parameters).
#pragma once

#include <memory>
#include <vector>

#include "models/layers/layer.h"

namespace moe {

class Residual : public Layer {
 public:
  explicit Residual(std::vector<std::unique_ptr<Layer>> branch);

  Tensor Forward(const Tensor& x) override;
  Tensor Backward(const Tensor& dy) override;
  std::vector<Parameter*> Parameters() override;  // the branch layers' parameters, in order
  void MoveTo(Device d) override;

  const std::vector<std::unique_ptr<Layer>>& branch() const { return branch_; }

 private:
  // a += b elementwise on a's device (both on the same one).
  static void AddInPlace(Tensor* a, const Tensor& b);
  std::vector<std::unique_ptr<Layer>> branch_;
  std::vector<int64_t> x_shape_;  // the last Forward's input shape (dx must match it)
};

}  // namespace moe
