// TaskHead: what a net's logits are trained and scored against. Each family owns one
// (CreateTaskHead, net_factory.h), so the trainer (launcher/training_session.h, the shared step
// loop launcher/train_loop.h, the test-set evaluation launcher/test_set_eval.h) runs single- and
// multi-task nets alike:
//   - batches: a batch gathered from the data set (normalised images, class labels) becomes the
//     net's batch: the head may transform images, turn labels into target logit columns and
//     fill the per-image side information (ImageSideInfo, net.h) that the net reads through
//     SetBatchInfo. Evaluation runs the test set once per pass (one for a single-task net).
//   - loss: the mean softmax cross-entropy of a batch and its gradient, the argmax-correct count,
//     and the evaluation's per-row scoring in double.
// SingleTaskHead (every family but "conditional") leaves batches as they are and scores every
// logit column; the conditional family's MultiTaskHead (multitask_head.h) samples a task and a
// modality per image and scores each row on its task's slice.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "models/layers/softmax_cross_entropy.h"
#include "models/nets/net.h"

namespace moe {

class TaskHead {
 public:
  virtual ~TaskHead() = default;

  // Batches. The rows of a training batch are the training stream's positions
  // [first_index, first_index + n) (launcher/batch_sampler.h), so a batch made on P ranks equals
  // the one made on one rank. *labels arrive as class labels and leave as logit columns.
  virtual void MakeTrainingBatch(int64_t first_index, Tensor* images, std::vector<int>* labels,
                                 ImageSideInfo* side) const = 0;
  virtual int NumEvalPasses() const = 0;
  // The same for evaluation pass `pass` in [0, NumEvalPasses()).
  virtual void MakeEvalBatch(int pass, Tensor* images, std::vector<int>* labels,
                             ImageSideInfo* side) const = 0;
  // Names for the log when NumEvalPasses() > 1: the line's title ("multi-task test accuracy")
  // and each pass's ("fine/image").
  virtual std::string EvalPassesTitle() const = 0;
  virtual std::string EvalPassName(int pass) const = 0;

  // Loss. logits [B, C] (host or CUDA), labels and side from the Make* above. Returns the mean
  // cross-entropy over the B rows; Backward then gives loss_scale * d(sum of row losses) /
  // dlogits on the logits' device (the SoftmaxCrossEntropy convention: the trainer passes
  // 1 / global_batch).
  virtual float Forward(const Tensor& logits, const std::vector<int>& labels,
                        const ImageSideInfo& side, float loss_scale) = 0;
  virtual Tensor Backward() const = 0;
  // Label smoothing of the training loss (recipe.label_smoothing; eps in [0, 1), 0 = off, the
  // default): each row's target becomes (1 - eps) onehot + eps / K over the K columns it is
  // scored on. Evaluation (Score) and NumCorrect stay plain cross-entropy and argmax.
  virtual void SetLabelSmoothing(float eps) = 0;
  // Rows of the last Forward whose argmax (over the row's scored columns) is the label.
  virtual int NumCorrect() const = 0;
  // Evaluation: over the first `valid` rows of host logits, the argmax-correct count and the sum
  // of the row losses (double).
  virtual void Score(const Tensor& host_logits, const std::vector<int>& labels,
                     const ImageSideInfo& side, int64_t valid, int64_t* correct,
                     double* loss_sum) const = 0;
};

// Softmax cross-entropy over every logit column; batches as gathered, one evaluation pass.
class SingleTaskHead : public TaskHead {
 public:
  void MakeTrainingBatch(int64_t first_index, Tensor* images, std::vector<int>* labels,
                         ImageSideInfo* side) const override;
  int NumEvalPasses() const override { return 1; }
  void MakeEvalBatch(int pass, Tensor* images, std::vector<int>* labels,
                     ImageSideInfo* side) const override;
  std::string EvalPassesTitle() const override { return "test accuracy"; }
  std::string EvalPassName(int pass) const override;

  float Forward(const Tensor& logits, const std::vector<int>& labels, const ImageSideInfo& side,
                float loss_scale) override;
  Tensor Backward() const override { return loss_.Backward(); }
  void SetLabelSmoothing(float eps) override { loss_.set_label_smoothing(eps); }
  int NumCorrect() const override { return loss_.NumCorrect(); }
  void Score(const Tensor& host_logits, const std::vector<int>& labels, const ImageSideInfo& side,
             int64_t valid, int64_t* correct, double* loss_sum) const override;

 private:
  SoftmaxCrossEntropy loss_;
};

// The evaluation scoring both heads share: row i is scored on columns [lo_i, hi_i) (every
// column when `ranges` is null) in double: argmax (lowest index on ties) against the label, and
// log(sum exp(z - max)) + max - z[label].
void ScoreRowsOnSlices(const Tensor& host_logits, const std::vector<int>& labels,
                       const std::vector<std::pair<int, int>>* ranges, int64_t valid,
                       int64_t* correct, double* loss_sum);

}  // namespace moe
