#include "models/layers/softmax_cross_entropy.h"

#include <glog/logging.h>

#include <cmath>

namespace moe {

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
#ifdef MOE_EP_HAS_CUDA
  if (logits.device() == Device::kCUDA) return ForwardCuda(logits, labels, loss_scale);
#endif
  CHECK(logits.device() == Device::kCPU) << "SoftmaxCrossEntropy: unsupported device";
  labels_ = labels;
  loss_scale_ = loss_scale;
  dlogits_ = Tensor();
  probs_ = Tensor({B, C});
  pred_.assign(B, 0);
  row_loss_.assign(B, 0.0);
  double total = 0;
  for (int64_t r = 0; r < B; ++r) {
    const float* l = logits.data() + r * C;
    int arg = 0;
    for (int64_t j = 1; j < C; ++j)
      if (l[j] > l[arg]) arg = static_cast<int>(j);
    const double mx = l[arg];
    double sum = 0;
    for (int64_t j = 0; j < C; ++j) sum += std::exp(l[j] - mx);
    const double lse = mx + std::log(sum);
    float* p = probs_.data() + r * C;
    for (int64_t j = 0; j < C; ++j) p[j] = static_cast<float>(std::exp(l[j] - lse));
    pred_[r] = arg;
    row_loss_[r] = lse - l[labels[r]];
    total += row_loss_[r];
  }
  return B == 0 ? 0.f : static_cast<float>(total / B);
}

Tensor SoftmaxCrossEntropy::Backward() const {
  if (dlogits_.ndim() == 2) return dlogits_.Clone();  // the last Forward took the device path
  CHECK(probs_.ndim() == 2) << "SoftmaxCrossEntropy::Backward before Forward";
  const int64_t B = probs_.dim(0), C = probs_.dim(1);
  Tensor d({B, C});
  for (int64_t r = 0; r < B; ++r) {
    const float* p = probs_.data() + r * C;
    float* dr = d.data() + r * C;
    for (int64_t j = 0; j < C; ++j) dr[j] = loss_scale_ * p[j];
    dr[labels_[r]] -= loss_scale_;
  }
  return d;
}

int SoftmaxCrossEntropy::NumCorrect() const {
  int n = 0;
  for (size_t r = 0; r < pred_.size(); ++r) n += pred_[r] == labels_[r];
  return n;
}

}  // namespace moe
