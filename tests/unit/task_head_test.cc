// The task heads (models/nets/task_head.h): what the trainer asks instead of knowing the family.
// A single-task head scores every logit column and leaves batches as gathered; the conditional
// family's multi-task head scores each row on its task's slice and makes the multi-task batches
// (models/nets/multitask.h). Checked on hand-made logits and a hand-made tiny batch, through the
// heads alone and through a TrainingSession on a tiny net of each kind.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include "comm/self_communicator.h"
#include "launcher/training_session.h"
#include "models/nets/multitask.h"
#include "models/nets/net_factory.h"
#include "models/nets/task_head.h"
#include "tests/unit/grad_check.h"

namespace moe {
namespace {

using testing::RandomTensor;

proto::TrainConfig TinyConfig(const std::string& family) {
  proto::TrainConfig c;
  auto* m = c.mutable_model();
  m->set_family(family);
  m->set_hidden_dim(16);
  m->set_mlp_dim(32);
  m->set_num_heads(2);
  m->set_num_layers(1);
  c.mutable_data()->set_batch_per_rank(2);
  c.set_seed(5);
  return c;
}

// Cross-entropy of one row on columns [lo, hi), in double.
double RowLoss(const float* row, int lo, int hi, int label) {
  double mx = row[lo], z = 0;
  for (int c = lo; c < hi; ++c) mx = std::max(mx, double(row[c]));
  for (int c = lo; c < hi; ++c) z += std::exp(row[c] - mx);
  return std::log(z) + mx - row[label];
}

// Two rows of 14 logits; each row's largest logit lies outside the fine slice [0, 10) or the
// coarse slice [10, 14), so a head that scored every column would pick other argmaxes.
Tensor HandMadeLogits() {
  std::vector<float> v(28, 0.f);
  v[3] = 2.f;    // row 0: fine class 3 is the slice's argmax ...
  v[12] = 9.f;   // ... but column 12 is the row's
  v[14 + 1] = 8.f;                 // row 1: column 1 is the row's argmax ...
  v[14 + 11] = 1.f;                // ... column 11 the coarse slice's
  v[14 + 13] = 0.5f;
  return Tensor::FromVector({2, 14}, v);
}

TEST(TaskHead, SingleTaskScoresEveryColumn) {
  const std::unique_ptr<TaskHead> head = CreateTaskHead(TinyConfig("vit"));
  EXPECT_EQ(head->NumEvalPasses(), 1);
  const Tensor logits = HandMadeLogits();
  const std::vector<int> labels = {3, 11};
  const float mean = head->Forward(logits, labels, ImageSideInfo(), 0.25f);
  const double l0 = RowLoss(logits.data(), 0, 14, 3), l1 = RowLoss(logits.data() + 14, 0, 14, 11);
  EXPECT_NEAR(mean, (l0 + l1) / 2, 1e-5);
  EXPECT_EQ(head->NumCorrect(), 0);  // the argmaxes are 12 and 1
  const Tensor d = head->Backward();  // 0.25 * (softmax - onehot) over all 14 columns
  EXPECT_GT(d.at(12), 0.f);
  EXPECT_LT(d.at(3), 0.f);
  int64_t correct = -1;
  double loss = 0;
  head->Score(logits, labels, ImageSideInfo(), /*valid=*/1, &correct, &loss);
  EXPECT_EQ(correct, 0);
  EXPECT_NEAR(loss, l0, 1e-12);  // only the valid row
}

TEST(TaskHead, MultiTaskScoresEachRowOnItsTaskSlice) {
  const std::unique_ptr<TaskHead> head = CreateTaskHead(TinyConfig("conditional"));
  EXPECT_EQ(head->NumEvalPasses(), kNumTasks * kNumModalities);
  const Tensor logits = HandMadeLogits();
  const std::vector<int> labels = {3, 11};  // fine class 3; coarse super-class 1 (column 11)
  ImageSideInfo side;
  side.task = {kTaskFine, kTaskCoarse};
  side.modality = {0, 1};
  const float mean = head->Forward(logits, labels, side, 0.25f);
  const double l0 = RowLoss(logits.data(), 0, 10, 3), l1 = RowLoss(logits.data() + 14, 10, 14, 11);
  EXPECT_NEAR(mean, (l0 + l1) / 2, 1e-5);
  EXPECT_EQ(head->NumCorrect(), 2);  // argmax within each slice
  const Tensor d = head->Backward();
  for (int c = 10; c < 14; ++c) EXPECT_EQ(d.at(c), 0.f) << "row 0, coarse column " << c;
  for (int c = 0; c < 10; ++c) EXPECT_EQ(d.at(14 + c), 0.f) << "row 1, fine column " << c;
  int64_t correct = -1;
  double loss = 0;
  head->Score(logits, labels, side, /*valid=*/2, &correct, &loss);
  EXPECT_EQ(correct, 2);
  EXPECT_NEAR(loss, l0 + l1, 1e-12);
  ImageSideInfo none;
  EXPECT_DEATH(head->Forward(logits, labels, none, 0.25f), "give every image a task");
}

TEST(TaskHead, BatchesSingleTaskAsGatheredMultiTaskAsTheTrainerMadeThem) {
  const Tensor gathered = RandomTensor({6, 784}, 9);
  const std::vector<int> classes = {0, 1, 5, 8, 9, 3};
  Tensor images = gathered.Clone();
  std::vector<int> labels = classes;
  ImageSideInfo side;
  CreateTaskHead(TinyConfig("vit"))->MakeTrainingBatch(40, &images, &labels, &side);
  EXPECT_EQ(labels, classes);
  EXPECT_TRUE(side.task.empty() && side.modality.empty());
  for (int64_t i = 0; i < images.numel(); ++i) ASSERT_EQ(images.at(i), gathered.at(i));

  const proto::TrainConfig c = TinyConfig("conditional");
  const std::unique_ptr<TaskHead> head = CreateTaskHead(c);
  head->MakeTrainingBatch(40, &images, &labels, &side);
  MultiTaskSpec spec;
  std::string err;
  ASSERT_TRUE(BuildMultiTaskSpec(c, &spec, &err)) << err;
  Tensor want = gathered.Clone();
  std::vector<int> want_labels = classes, task, modality;
  MakeMultiTaskBatch(spec, 28, 28, 40, &want, &want_labels, &task, &modality);
  EXPECT_EQ(labels, want_labels);
  EXPECT_EQ(side.task, task);
  EXPECT_EQ(side.modality, modality);
  for (int64_t i = 0; i < images.numel(); ++i) ASSERT_EQ(images.at(i), want.at(i));

  // Evaluation pass 3 is coarse on the second view, for every row.
  images = gathered.Clone();
  labels = classes;
  head->MakeEvalBatch(3, &images, &labels, &side);
  EXPECT_EQ(head->EvalPassName(3), "coarse/view2");
  EXPECT_EQ(side.task, std::vector<int>(6, kTaskCoarse));
  EXPECT_EQ(side.modality, std::vector<int>(6, 1));
  EXPECT_EQ(labels[5], spec.Target(kTaskCoarse, 3));
}

// Through the trainer: Evaluate's loss is the hand-computed cross-entropy of the net's own
// logits, over every column for the single-task net and over each row's task slice for the
// conditional one (which gets the rows' tasks and modalities through the session).
void ExpectSessionLoss(const std::string& family, const std::vector<int>& labels,
                       const ImageSideInfo& side, bool sliced) {
  SelfCommunicator comm;
  TrainingSession session(TinyConfig(family), &comm, nullptr);
  const Tensor images = RandomTensor({2, 784}, 21);
  int64_t correct = 0;
  double loss = 0;
  session.Evaluate(images, labels, 2, &correct, &loss, side);
  // The same eval context again: the logits Evaluate scored.
  session.net().SetBatchInfo(MakeBatchInfo(nullptr, side));
  const Tensor logits = session.net().Forward(images);
  const int C = static_cast<int>(logits.dim(1));
  double want = 0, full = 0;
  for (int i = 0; i < 2; ++i) {
    const int lo = sliced ? (side.task[i] == kTaskFine ? 0 : 10) : 0;
    const int hi = sliced ? (side.task[i] == kTaskFine ? 10 : C) : C;
    want += RowLoss(logits.data() + i * C, lo, hi, labels[i]);
    full += RowLoss(logits.data() + i * C, 0, C, labels[i]);
  }
  EXPECT_NEAR(loss, want, 1e-9) << family;
  if (sliced) EXPECT_LT(loss, full - 1e-6) << "the conditional net is scored on task slices";
}

TEST(TaskHead, TrainingSessionScoresSingleAndMultiTaskNets) {
  ExpectSessionLoss("vit", {3, 7}, ImageSideInfo(), /*sliced=*/false);
  ImageSideInfo side;
  side.task = {kTaskFine, kTaskCoarse};
  side.modality = {1, 0};
  ExpectSessionLoss("conditional", {3, 12}, side, /*sliced=*/true);
}

TEST(TaskHead, UnreadableSuperclassFileIsAConfigError) {
  proto::TrainConfig c = TinyConfig("conditional");
  c.mutable_model()->mutable_conditional()->set_superclass_file("/nonexistent/sc.txt");
  std::vector<std::string> errors;
  ValidateNetConfig(c, &errors);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0], "config error: model.conditional.superclass_file=/nonexistent/sc.txt: "
                       "cannot open file");
}

}  // namespace
}  // namespace moe
