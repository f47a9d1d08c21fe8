// MultiTaskHead: the conditional family's TaskHead (task_head.h) on multi-task Fashion-MNIST
// (multitask.h). Each training image gets a task and a modality from its stream position (the
// second view where the modality is 1, its label the task's logit column); each row is scored on
// its task's logit slice only (SlicedCrossEntropy: fine classes [0, 10), super-classes
// [10, 10 + S)); the test set is evaluated once per (task, modality) pair, in the order
// fine/image, fine/view2, coarse/image, coarse/view2.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "models/layers/sliced_cross_entropy.h"
#include "models/nets/multitask.h"
#include "models/nets/task_head.h"
#include "proto/moe_ep.pb.h"

namespace moe {

class MultiTaskHead : public TaskHead {
 public:
  // image_side: rows = cols of the square images (the second view rotates them).
  MultiTaskHead(const MultiTaskSpec& spec, std::vector<std::pair<int, int>> task_ranges,
                int image_side);

  void MakeTrainingBatch(int64_t first_index, Tensor* images, std::vector<int>* labels,
                         ImageSideInfo* side) const override;
  int NumEvalPasses() const override { return kNumTasks * kNumModalities; }
  void MakeEvalBatch(int pass, Tensor* images, std::vector<int>* labels,
                     ImageSideInfo* side) const override;
  std::string EvalPassesTitle() const override { return "multi-task test accuracy"; }
  std::string EvalPassName(int pass) const override;

  // SlicedCrossEntropy is host code; the [B, C] logits are small, so device logits are scored
  // on the host and the gradient goes back to their device.
  float Forward(const Tensor& logits, const std::vector<int>& labels, const ImageSideInfo& side,
                float loss_scale) override;
  Tensor Backward() const override;
  void SetLabelSmoothing(float eps) override { loss_.set_label_smoothing(eps); }
  int NumCorrect() const override { return loss_.NumCorrect(); }
  void Score(const Tensor& host_logits, const std::vector<int>& labels, const ImageSideInfo& side,
             int64_t valid, int64_t* correct, double* loss_sum) const override;

 private:
  // Each row's task slice [lo, hi).
  std::vector<std::pair<int, int>> RowRanges(const ImageSideInfo& side, int64_t rows) const;

  MultiTaskSpec spec_;
  std::vector<std::pair<int, int>> task_ranges_;
  int image_side_;
  SlicedCrossEntropy loss_;
  Device logits_device_ = Device::kCPU;  // of the last Forward
};

// The head of a "conditional" config: false with the super-class map's one-line error.
bool CreateMultiTaskHead(const proto::TrainConfig& config, std::unique_ptr<TaskHead>* head,
                         std::string* error);

}  // namespace moe
