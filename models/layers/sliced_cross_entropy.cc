#include "models/layers/sliced_cross_entropy.h"

#include <glog/logging.h>

#include <cmath>

namespace moe {

void SlicedCrossEntropy::set_label_smoothing(float eps) {
  CHECK(eps >= 0.f && eps < 1.f) << "SlicedCrossEntropy: label smoothing " << eps
                                 << " outside [0, 1)";
  label_smoothing_ = eps;
}

float SlicedCrossEntropy::Forward(const Tensor& logits, const std::vector<int>& labels,
                                  const std::vector<std::pair<int, int>>& ranges,
                                  float loss_scale) {
  CHECK(logits.ndim() == 2) << "SlicedCrossEntropy: logits must be [B, C], got "
                            << logits.ShapeString();
  CHECK(logits.device() == Device::kCPU) << "SlicedCrossEntropy: host logits only";
  const int64_t B = logits.dim(0), C = logits.dim(1);
  CHECK_EQ(static_cast<int64_t>(labels.size()), B) << "SlicedCrossEntropy: labels per row";
  CHECK_EQ(static_cast<int64_t>(ranges.size()), B) << "SlicedCrossEntropy: ranges per row";
  labels_ = labels;
  ranges_ = ranges;
  loss_scale_ = loss_scale;
  const double eps = label_smoothing_;
  probs_ = Tensor::Zeros({B, C});
  pred_.assign(B, 0);
  row_loss_.assign(B, 0.0);
  double total = 0;
  for (int64_t r = 0; r < B; ++r) {
    const int lo = ranges[r].first, hi = ranges[r].second;
    CHECK(lo >= 0 && lo < hi && hi <= C)
        << "SlicedCrossEntropy: row " << r << " range [" << lo << ", " << hi << ") outside [0, "
        << C << ")";
    CHECK(labels[r] >= lo && labels[r] < hi)
        << "SlicedCrossEntropy: label " << labels[r] << " of row " << r << " is not in its slice ["
        << lo << ", " << hi << ")";
    const float* l = logits.data() + r * C;
    int arg = lo;
    for (int j = lo + 1; j < hi; ++j)
      if (l[j] > l[arg]) arg = j;
    const double mx = l[arg];
    double sum = 0, logit_sum = 0;
    for (int j = lo; j < hi; ++j) {
      sum += std::exp(l[j] - mx);
      logit_sum += l[j];
    }
    const double lse = mx + std::log(sum);
    float* p = probs_.data() + r * C;
    for (int j = lo; j < hi; ++j) p[j] = static_cast<float>(std::exp(l[j] - lse));
    pred_[r] = arg;
    const double ce = lse - l[labels[r]];
    row_loss_[r] = eps > 0 ? (1.0 - eps) * ce + eps * (lse - logit_sum / (hi - lo)) : ce;
    total += row_loss_[r];
  }
  return B == 0 ? 0.f : static_cast<float>(total / B);
}

Tensor SlicedCrossEntropy::Backward() const {
  CHECK(probs_.ndim() == 2) << "SlicedCrossEntropy::Backward before Forward";
  const int64_t B = probs_.dim(0), C = probs_.dim(1);
  Tensor d({B, C});
  // Columns outside a row's slice have probs 0 there, so the same expression zeroes them.
  for (int64_t i = 0; i < B * C; ++i) d.data()[i] = loss_scale_ * probs_.data()[i];
  const float on = loss_scale_ * (1.f - label_smoothing_);
  for (int64_t r = 0; r < B; ++r) {
    const int lo = ranges_[r].first, hi = ranges_[r].second;
    if (label_smoothing_ > 0) {
      const float off = loss_scale_ * (label_smoothing_ / static_cast<float>(hi - lo));
      for (int j = lo; j < hi; ++j) d.data()[r * C + j] -= off;
    }
    d.data()[r * C + labels_[r]] -= on;
  }
  return d;
}

int SlicedCrossEntropy::NumCorrect() const {
  int n = 0;
  for (size_t r = 0; r < pred_.size(); ++r) n += pred_[r] == labels_[r];
  return n;
}

}  // namespace moe
