// SoftmaxCrossEntropy: the classification loss (not a Layer: it takes labels and ends the graph).
//
// Forward returns the MEAN cross-entropy over the B rows (for logging). Backward returns the
// gradient of loss_scale * SUM over rows of CE, i.e. loss_scale * (softmax - onehot): the trainer
// passes loss_scale = 1 / global_batch on every rank, so the gradients summed over ranks equal
// the gradient of the global mean loss (see launcher/training_session.h).
//
// Label smoothing eps (recipe.label_smoothing; 0 = off, the plain loss bit for bit): each row's
// target is (1 - eps) onehot + eps / C, so the loss is -sum_j t_j log softmax_j and the gradient
// loss_scale * (softmax - t) (Backend::SoftmaxCrossEntropy states the float operations).
#pragma once

#include <vector>

#include "core/tensor.h"

namespace moe {

class SoftmaxCrossEntropy {
 public:
  explicit SoftmaxCrossEntropy(float label_smoothing = 0.f) {
    set_label_smoothing(label_smoothing);
  }
  // eps in [0, 1).
  void set_label_smoothing(float eps);
  float label_smoothing() const { return label_smoothing_; }

  // logits [B, C] (on any device), labels (host) in [0, C), one per row. The backend's
  // SoftmaxCrossEntropy (core/backend.h) computes the per-row losses, argmaxes and the scaled
  // gradient at once (on CUDA one kernel; the losses and predictions come back to the host, B
  // floats + B ints, synchronous); the mean is summed here in double. B == 0 returns 0.
  float Forward(const Tensor& logits, const std::vector<int>& labels, float loss_scale);
  // dlogits [B, C] for the last Forward, on the logits' device (a fresh tensor each call).
  Tensor Backward() const;

  // Rows of the last Forward whose argmax (lowest index on ties) equals the label.
  int NumCorrect() const;
  // Per-row (smoothed) CE and argmax of the last Forward, e.g. to count only the first `valid`
  // rows.
  const std::vector<double>& row_losses() const { return row_loss_; }
  const std::vector<int>& predictions() const { return pred_; }

 private:
  std::vector<int> labels_, pred_;
  std::vector<double> row_loss_;
  Tensor dlogits_;  // loss_scale * (softmax - target) of the last Forward, on the logits' device
  float label_smoothing_ = 0.f;
};

}  // namespace moe
