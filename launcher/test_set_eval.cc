#include "launcher/test_set_eval.h"

#include <algorithm>
#include <cstdio>

namespace moe {

void GatherBatch(const ImageDataset& d, const std::vector<int64_t>& idx, Tensor* images,
                 std::vector<int>* labels) {
  const int64_t px = static_cast<int64_t>(d.rows) * d.cols;
  *images = Tensor({static_cast<int64_t>(idx.size()), px});
  labels->resize(idx.size());
  for (size_t i = 0; i < idx.size(); ++i) {
    d.CopyNormalisedImage(idx[i], images->data() + i * px);
    (*labels)[i] = d.labels[idx[i]];
  }
}

namespace {
// Test images [first, first + valid) as one batch of `batch` rows of evaluation pass `pass`,
// padded with image 0; adds this rank's correct count and loss sum to sums[0] and sums[1].
void EvaluateBatch(TrainingSession* session, const ImageDataset& test, int pass, int64_t first,
                   int64_t valid, int64_t batch, RoutingAnalytics* analytics, double* sums) {
  std::vector<int64_t> idx(batch);
  for (int64_t i = 0; i < batch; ++i) idx[i] = i < valid ? first + i : 0;
  Tensor images;
  std::vector<int> labels;
  GatherBatch(test, idx, &images, &labels);
  const std::vector<int> classes = labels;  // the head may turn labels into logit columns
  ImageSideInfo side;
  session->task_head().MakeEvalBatch(pass, &images, &labels, &side);
  int64_t correct = 0;
  double loss = 0;
  session->Evaluate(images, labels, valid, &correct, &loss, side);
  if (analytics != nullptr) analytics->ObserveNet(session->net().moe_layers(), classes, valid);
  sums[0] += static_cast<double>(correct);
  sums[1] += loss;
}
}  // namespace

TestSetAccuracy EvaluateTestSet(TrainingSession* session, const ImageDataset& test,
                                int64_t eval_images, int64_t batch, Communicator* comm,
                                RoutingAnalytics* analytics) {
  const int world = comm->Size(GroupKind::kWorld), rank = comm->Rank(GroupKind::kWorld);
  const int64_t n = eval_images > 0 ? std::min<int64_t>(eval_images, test.count) : test.count;
  const int64_t per_round = batch * world;
  const int64_t rounds = (n + per_round - 1) / per_round;
  const int passes = session->task_head().NumEvalPasses();
  std::vector<double> sums(2 * static_cast<size_t>(passes), 0.0);  // per pass: correct, loss
  for (int pass = 0; pass < passes; ++pass)
    for (int64_t r = 0; r < rounds; ++r) {
      const int64_t first = r * per_round + rank * batch;
      const int64_t valid = std::max<int64_t>(0, std::min<int64_t>(batch, n - first));
      EvaluateBatch(session, test, pass, first, valid, batch, analytics, &sums[2 * pass]);
    }
  comm->AllReduceSum(sums.data(), static_cast<int64_t>(sums.size()), GroupKind::kWorld);
  TestSetAccuracy out;
  double sum = 0;
  for (int pass = 0; pass < passes; ++pass) {
    out.per_pass.push_back(sums[2 * pass] / n);
    sum += out.per_pass.back();
  }
  out.mean = sum / passes;
  return out;
}

std::string FormatPassAccuracies(const TaskHead& head, const TestSetAccuracy& accuracy) {
  std::string out;
  char value[32];
  for (size_t pass = 0; pass < accuracy.per_pass.size(); ++pass) {
    std::snprintf(value, sizeof(value), " %.4f", accuracy.per_pass[pass]);
    out += (pass == 0 ? "" : "  ") + head.EvalPassName(static_cast<int>(pass)) + value;
  }
  return out;
}

}  // namespace moe
