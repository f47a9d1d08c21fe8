// SoftmaxCrossEntropy: the classification loss (not a Layer: it takes labels and ends the graph).
//
// Forward returns the MEAN cross-entropy over the B rows (for logging). Backward returns the
// gradient of loss_scale * SUM over rows of CE, i.e. loss_scale * (softmax - onehot): the trainer
// passes loss_scale = 1 / global_batch on every rank, so the gradients summed over ranks equal
// the gradient of the global mean loss (see launcher/training_session.h).
#pragma once

#include <vector>

#include "core/tensor.h"

namespace moe {

class SoftmaxCrossEntropy {
 public:
  // logits [B, C] (host or CUDA), labels (host) in [0, C), one per row. Caches what Backward
  // and the accessors need. B == 0 returns 0. CUDA logits take the device path
  // (softmax_cross_entropy_cuda.cc): one kernel computes the per-row losses, argmaxes and the
  // scaled gradient; losses and predictions are copied to the host (B floats + B ints,
  // synchronous) for the mean and the accessors; Backward then returns a device tensor.
  float Forward(const Tensor& logits, const std::vector<int>& labels, float loss_scale);
  // dlogits [B, C] for the last Forward, on the logits' device (a fresh tensor each call).
  Tensor Backward() const;

  // Rows of the last Forward whose argmax (lowest index on ties) equals the label.
  int NumCorrect() const;
  // Per-row CE and argmax of the last Forward, e.g. to count only the first `valid` rows.
  const std::vector<double>& row_losses() const { return row_loss_; }
  const std::vector<int>& predictions() const { return pred_; }

 private:
  float ForwardCuda(const Tensor& logits, const std::vector<int>& labels, float loss_scale);
  Tensor probs_;  // [B, C] softmax of the last logits (host path only)
  std::vector<int> labels_, pred_;
  std::vector<double> row_loss_;
  float loss_scale_ = 1.f;
  Tensor dlogits_;  // device path: loss_scale * (softmax - onehot) of the last CUDA Forward
};

}  // namespace moe
