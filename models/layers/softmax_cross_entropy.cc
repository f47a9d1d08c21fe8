#include "models/layers/softmax_cross_entropy.h"

#include <glog/logging.h>

#include "core/backend.h"

namespace moe {

void SoftmaxCrossEntropy::set_label_smoothing(float eps) {
  CHECK(eps >= 0.f && eps < 1.f) << "SoftmaxCrossEntropy: label smoothing " << eps
                                 << " outside [0, 1)";
  label_smoothing_ = eps;
}

float SoftmaxCrossEntropy::Forward(const Tensor& logits, const std::vector<int>& labels,
                                   float loss_scale) {
  CHECK(logits.ndim() == 2) << "SoftmaxCrossEntropy: logits must be [B, C], got "
                            << logits.ShapeString();
  const int64_t B = logits.dim(0), C = logits.dim(1);
  CHECK_EQ(static_cast<int64_t>(labels.size()), B)
      << "SoftmaxCrossEntropy: " << labels.size() << " labels for " << B << " rows of logits";
  CHECK_GT(C, 0) << "SoftmaxCrossEntropy: no classes";
  for (int64_t r = 0; r < B; ++r)
    CHECK(labels[r] >= 0 && labels[r] < C)
        << "SoftmaxCrossEntropy: label " << labels[r] << " at row " << r
        << " is out of range [0, " << C << ")";
  labels_ = labels;
  dlogits_ = BackendFor(logits.device())
                 .SoftmaxCrossEntropy(logits, labels, loss_scale, label_smoothing_, &row_loss_,
                                      &pred_);
  double total = 0;
  for (int64_t r = 0; r < B; ++r) total += row_loss_[r];
  return B == 0 ? 0.f : static_cast<float>(total / B);
}

Tensor SoftmaxCrossEntropy::Backward() const {
  CHECK(dlogits_.ndim() == 2) << "SoftmaxCrossEntropy::Backward before Forward";
  return dlogits_.Clone();
}

int SoftmaxCrossEntropy::NumCorrect() const {
  int n = 0;
  for (size_t r = 0; r < pred_.size(); ++r) n += pred_[r] == labels_[r];
  return n;
}

}  // namespace moe
