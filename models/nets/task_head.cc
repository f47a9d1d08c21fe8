#include "models/nets/task_head.h"

#include <glog/logging.h>

#include <cmath>

namespace moe {

void SingleTaskHead::MakeTrainingBatch(int64_t first_index, Tensor* images,
                                       std::vector<int>* labels, ImageSideInfo* side) const {
  (void)first_index;
  (void)images;
  (void)labels;
  *side = ImageSideInfo();
}

void SingleTaskHead::MakeEvalBatch(int pass, Tensor* images, std::vector<int>* labels,
                                   ImageSideInfo* side) const {
  CHECK_EQ(pass, 0) << "a single-task net has one evaluation pass";
  MakeTrainingBatch(0, images, labels, side);
}

std::string SingleTaskHead::EvalPassName(int pass) const {
  CHECK_EQ(pass, 0) << "a single-task net has one evaluation pass";
  return "test";
}

float SingleTaskHead::Forward(const Tensor& logits, const std::vector<int>& labels,
                              const ImageSideInfo& side, float loss_scale) {
  CHECK(side.task.empty() && side.modality.empty())
      << "per-image tasks or modalities given to a single-task net";
  return loss_.Forward(logits, labels, loss_scale);
}

void SingleTaskHead::Score(const Tensor& host_logits, const std::vector<int>& labels,
                           const ImageSideInfo& side, int64_t valid, int64_t* correct,
                           double* loss_sum) const {
  CHECK(side.task.empty() && side.modality.empty())
      << "per-image tasks or modalities given to a single-task net";
  ScoreRowsOnSlices(host_logits, labels, /*ranges=*/nullptr, valid, correct, loss_sum);
}

void ScoreRowsOnSlices(const Tensor& host_logits, const std::vector<int>& labels,
                       const std::vector<std::pair<int, int>>* ranges, int64_t valid,
                       int64_t* correct, double* loss_sum) {
  CHECK(host_logits.device() == Device::kCPU) << "scoring reads host logits";
  const int64_t C = host_logits.dim(1);
  int64_t ok = 0;
  double ls = 0;
  for (int64_t i = 0; i < valid; ++i) {
    const float* row = host_logits.data() + i * C;
    const int lo = ranges != nullptr ? (*ranges)[i].first : 0;
    const int hi = ranges != nullptr ? (*ranges)[i].second : static_cast<int>(C);
    int best = lo;
    float mx = row[lo];
    for (int c = lo + 1; c < hi; ++c)
      if (row[c] > mx) mx = row[best = c];
    ok += best == labels[i];
    double z = 0;
    for (int c = lo; c < hi; ++c) z += std::exp(double(row[c]) - mx);
    ls += std::log(z) + mx - row[labels[i]];
  }
  *correct = ok;
  *loss_sum = ls;
}

}  // namespace moe
