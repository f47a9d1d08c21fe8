// SlicedCrossEntropy: softmax cross-entropy where each row is scored on its own column range
// [lo, hi) of the logits (multi-task training with one output head per task: the conditional
// family's logits are [B, 10 + S], fine classes then super-classes, and a sample is scored only
// on its task's slice). Host only, like the labels.
//
// Labels are GLOBAL column indices (lo <= label < hi). Forward returns the mean CE over the rows;
// Backward returns loss_scale * (softmax over the slice - onehot) inside each row's slice and 0
// outside it, so the other task's head receives no gradient from this row. Same loss-scale
// convention as SoftmaxCrossEntropy (the trainer passes 1 / global_batch).
//
// Label smoothing eps (0 = off): the target inside a row's slice of K = hi - lo columns is
// (1 - eps) onehot + eps / K, with SoftmaxCrossEntropy's float operations (core/backend.h).
#pragma once

#include <utility>
#include <vector>

#include "core/tensor.h"

namespace moe {

class SlicedCrossEntropy {
 public:
  explicit SlicedCrossEntropy(float label_smoothing = 0.f) {
    set_label_smoothing(label_smoothing);
  }
  // eps in [0, 1).
  void set_label_smoothing(float eps);

  // ranges[r] = {lo, hi} of row r, 0 <= lo < hi <= C.
  float Forward(const Tensor& logits, const std::vector<int>& labels,
                const std::vector<std::pair<int, int>>& ranges, float loss_scale);
  Tensor Backward() const;

  int NumCorrect() const;
  // Per-row CE and argmax over the row's slice (a global column index) of the last Forward.
  const std::vector<double>& row_losses() const { return row_loss_; }
  const std::vector<int>& predictions() const { return pred_; }

 private:
  Tensor probs_;  // [B, C]: softmax within the slice, 0 outside
  std::vector<int> labels_, pred_;
  std::vector<std::pair<int, int>> ranges_;
  std::vector<double> row_loss_;
  float loss_scale_ = 1.f;
  float label_smoothing_ = 0.f;
};

}  // namespace moe
