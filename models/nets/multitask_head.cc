#include "models/nets/multitask_head.h"

#include <glog/logging.h>

namespace moe {

MultiTaskHead::MultiTaskHead(const MultiTaskSpec& spec,
                             std::vector<std::pair<int, int>> task_ranges, int image_side)
    : spec_(spec), task_ranges_(std::move(task_ranges)), image_side_(image_side) {}

void MultiTaskHead::MakeTrainingBatch(int64_t first_index, Tensor* images,
                                      std::vector<int>* labels, ImageSideInfo* side) const {
  MakeMultiTaskBatch(spec_, image_side_, image_side_, first_index, images, labels, &side->task,
                     &side->modality);
}

void MultiTaskHead::MakeEvalBatch(int pass, Tensor* images, std::vector<int>* labels,
                                  ImageSideInfo* side) const {
  CHECK(pass >= 0 && pass < NumEvalPasses()) << "evaluation pass " << pass;
  SetTaskAndModality(spec_, image_side_, image_side_, pass / kNumModalities,
                     pass % kNumModalities, images, labels, &side->task, &side->modality);
}

std::string MultiTaskHead::EvalPassName(int pass) const {
  static const char* kTask[kNumTasks] = {"fine", "coarse"};
  static const char* kModality[kNumModalities] = {"image", "view2"};
  CHECK(pass >= 0 && pass < NumEvalPasses()) << "evaluation pass " << pass;
  return std::string(kTask[pass / kNumModalities]) + "/" + kModality[pass % kNumModalities];
}

std::vector<std::pair<int, int>> MultiTaskHead::RowRanges(const ImageSideInfo& side,
                                                          int64_t rows) const {
  CHECK_EQ(static_cast<int64_t>(side.task.size()), rows)
      << "the conditional family scores each row on its task's slice: give every image a task "
         "(TaskHead::MakeTrainingBatch / MakeEvalBatch)";
  std::vector<std::pair<int, int>> ranges(rows);
  for (int64_t i = 0; i < rows; ++i) ranges[i] = task_ranges_.at(side.task[i]);
  return ranges;
}

float MultiTaskHead::Forward(const Tensor& logits, const std::vector<int>& labels,
                             const ImageSideInfo& side, float loss_scale) {
  const std::vector<std::pair<int, int>> ranges = RowRanges(side, logits.dim(0));
  logits_device_ = logits.device();
  Tensor host_logits = logits;
  if (logits_device_ != Device::kCPU) {
    host_logits = Tensor(logits.shape());
    host_logits.CopyFrom(logits);
  }
  return loss_.Forward(host_logits, labels, ranges, loss_scale);
}

Tensor MultiTaskHead::Backward() const {
  Tensor host = loss_.Backward();
  if (logits_device_ == Device::kCPU) return host;
  Tensor on_device(host.shape(), logits_device_);
  on_device.CopyFrom(host);
  return on_device;
}

void MultiTaskHead::Score(const Tensor& host_logits, const std::vector<int>& labels,
                          const ImageSideInfo& side, int64_t valid, int64_t* correct,
                          double* loss_sum) const {
  const std::vector<std::pair<int, int>> ranges = RowRanges(side, host_logits.dim(0));
  ScoreRowsOnSlices(host_logits, labels, &ranges, valid, correct, loss_sum);
}

bool CreateMultiTaskHead(const proto::TrainConfig& config, std::unique_ptr<TaskHead>* head,
                         std::string* error) {
  MultiTaskSpec spec;
  if (!BuildMultiTaskSpec(config, &spec, error)) return false;
  *head = std::make_unique<MultiTaskHead>(spec, TaskLogitRanges(config.model()),
                                          config.model().image_size());
  return true;
}

}  // namespace moe
