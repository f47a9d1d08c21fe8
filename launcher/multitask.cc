#include "launcher/multitask.h"

#include <glog/logging.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>

#include "core/rng.h"

namespace moe {

std::vector<int> DefaultSuperclassMap() {
  //       T-shirt Trouser Pullover Dress Coat Sandal Shirt Sneaker Bag Ankle-boot
  return {0, 1, 0, 1, 0, 2, 0, 2, 3, 2};
}

bool IsMultiTask(const proto::TrainConfig& config) {
  return config.model().family() == "conditional";
}

std::vector<std::pair<int, int>> TaskLogitRanges(const proto::ModelConfig& model) {
  const int S = model.conditional().num_superclasses();
  return {{0, kFashionMnistClasses}, {kFashionMnistClasses, kFashionMnistClasses + S}};
}

bool BuildMultiTaskSpec(const proto::TrainConfig& config, MultiTaskSpec* spec,
                        std::string* error) {
  const proto::ConditionalConfig& cc = config.model().conditional();
  spec->seed = config.seed();
  spec->num_superclasses = cc.num_superclasses();
  if (cc.superclass_file().empty()) {
    spec->superclass_of = DefaultSuperclassMap();
    if (spec->num_superclasses != 4) {
      *error = "model.conditional.num_superclasses=" + std::to_string(spec->num_superclasses) +
               ": the built-in super-class map has 4; set model.conditional.superclass_file";
      return false;
    }
    return true;
  }
  const std::string& path = cc.superclass_file();
  std::ifstream in(path);
  if (!in) {
    *error = "model.conditional.superclass_file=" + path + ": cannot open file";
    return false;
  }
  spec->superclass_of.assign(kFashionMnistClasses, -1);
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    const std::string body = line.substr(0, line.find('#'));
    std::istringstream ls(body);
    int c = 0, s = 0;
    if (!(ls >> c)) continue;  // blank or comment
    std::string rest;
    if (!(ls >> s) || (ls >> rest)) {
      *error = path + ":" + std::to_string(line_no) + ": expected \"class superclass\"";
      return false;
    }
    if (c < 0 || c >= kFashionMnistClasses || s < 0 || s >= spec->num_superclasses) {
      *error = path + ":" + std::to_string(line_no) + ": class " + std::to_string(c) +
               " super-class " + std::to_string(s) + ": need class in [0, 10) and super-class in "
               "[0, model.conditional.num_superclasses=" + std::to_string(spec->num_superclasses) +
               ")";
      return false;
    }
    if (spec->superclass_of[c] >= 0) {
      *error = path + ":" + std::to_string(line_no) + ": class " + std::to_string(c) +
               " mapped twice";
      return false;
    }
    spec->superclass_of[c] = s;
  }
  std::set<int> used;
  for (int c = 0; c < kFashionMnistClasses; ++c) {
    if (spec->superclass_of[c] < 0) {
      *error = path + ": class " + std::to_string(c) + " has no super-class";
      return false;
    }
    used.insert(spec->superclass_of[c]);
  }
  if (static_cast<int>(used.size()) != spec->num_superclasses) {
    *error = path + ": uses " + std::to_string(used.size()) + " super-classes, " +
             "model.conditional.num_superclasses=" + std::to_string(spec->num_superclasses);
    return false;
  }
  return true;
}

namespace {
// One Philox draw per sample decides both bits, keyed apart from every other stream.
bool SampleBit(uint64_t seed, int64_t index, const char* what) {
  CounterRng rng(MixKey(seed, HashString(what)));
  return rng.Uniform(static_cast<uint64_t>(index)) < 0.5f;
}
}  // namespace

int SampleTask(uint64_t seed, int64_t index) {
  return SampleBit(seed, index, "multitask.task") ? kTaskCoarse : kTaskFine;
}

int SampleModality(uint64_t seed, int64_t index) {
  return SampleBit(seed, index, "multitask.modality") ? 1 : 0;
}

void ToSecondView(float* image, int rows, int cols) {
  CHECK_EQ(rows, cols) << "the second view rotates square images";
  std::vector<float> src(image, image + static_cast<int64_t>(rows) * cols);
  const float offset = (1.f - 2.f * kFashionMnistMean) / kFashionMnistStd;
  // Clockwise: output (r, c) shows input (rows - 1 - c, r).
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c)
      image[r * cols + c] = offset - src[(rows - 1 - c) * cols + r];
}

namespace {
void ApplyPerRow(const MultiTaskSpec& spec, int rows, int cols, Tensor* images,
                 std::vector<int>* labels, const std::vector<int>& task,
                 const std::vector<int>& modality) {
  const int64_t n = images->dim(0), px = static_cast<int64_t>(rows) * cols;
  CHECK_EQ(images->dim(1), px);
  CHECK_EQ(static_cast<int64_t>(labels->size()), n);
  for (int64_t i = 0; i < n; ++i) {
    if (modality[i] == 1) ToSecondView(images->data() + i * px, rows, cols);
    (*labels)[i] = spec.Target(task[i], (*labels)[i]);
  }
}
}  // namespace

void MakeMultiTaskBatch(const MultiTaskSpec& spec, int rows, int cols, int64_t first_index,
                        Tensor* images, std::vector<int>* labels, std::vector<int>* task,
                        std::vector<int>* modality) {
  const int64_t n = images->dim(0);
  task->resize(n);
  modality->resize(n);
  for (int64_t i = 0; i < n; ++i) {
    (*task)[i] = SampleTask(spec.seed, first_index + i);
    (*modality)[i] = SampleModality(spec.seed, first_index + i);
  }
  ApplyPerRow(spec, rows, cols, images, labels, *task, *modality);
}

void SetTaskAndModality(const MultiTaskSpec& spec, int rows, int cols, int task, int modality,
                        Tensor* images, std::vector<int>* labels, std::vector<int>* tasks,
                        std::vector<int>* modalities) {
  tasks->assign(images->dim(0), task);
  modalities->assign(images->dim(0), modality);
  ApplyPerRow(spec, rows, cols, images, labels, *tasks, *modalities);
}

double MultiTaskAccuracy::Mean() const {
  double s = 0;
  for (int t = 0; t < kNumTasks; ++t)
    for (int m = 0; m < kNumModalities; ++m) s += accuracy[t][m];
  return s / (kNumTasks * kNumModalities);
}

std::string MultiTaskAccuracy::ToString() const {
  static const char* kTask[kNumTasks] = {"fine", "coarse"};
  static const char* kModality[kNumModalities] = {"image", "view2"};
  std::string out;
  char buf[64];
  for (int t = 0; t < kNumTasks; ++t)
    for (int m = 0; m < kNumModalities; ++m) {
      std::snprintf(buf, sizeof(buf), "%s%s/%s %.4f", out.empty() ? "" : "  ", kTask[t],
                    kModality[m], accuracy[t][m]);
      out += buf;
    }
  return out;
}

MultiTaskAccuracy EvaluateMultiTask(TrainingSession* session, const ImageDataset& test,
                                    const MultiTaskSpec& spec, int64_t eval_images,
                                    int64_t batch, Communicator* comm,
                                    RoutingAnalytics* analytics) {
  const int world = comm->Size(GroupKind::kWorld), rank = comm->Rank(GroupKind::kWorld);
  const int64_t n = eval_images > 0 ? std::min<int64_t>(eval_images, test.count) : test.count;
  const int64_t per_round = batch * world;
  const int64_t rounds = (n + per_round - 1) / per_round;
  const int64_t px = test.pixels_per_image();
  std::vector<double> sums(2 * kNumTasks * kNumModalities, 0.0);
  Tensor images({batch, px});
  std::vector<int> labels(batch), tasks, modalities;
  for (int t = 0; t < kNumTasks; ++t)
    for (int m = 0; m < kNumModalities; ++m)
      for (int64_t r = 0; r < rounds; ++r) {
        const int64_t first = r * per_round + rank * batch;
        const int64_t valid = std::max<int64_t>(0, std::min<int64_t>(batch, n - first));
        for (int64_t i = 0; i < batch; ++i) {
          const int64_t idx = i < valid ? first + i : 0;  // pad with image 0
          std::copy(test.image(idx), test.image(idx) + px, images.data() + i * px);
          labels[i] = test.labels[idx];
        }
        const std::vector<int> fine = labels;  // the task may remap labels; analytics use these
        SetTaskAndModality(spec, test.rows, test.cols, t, m, &images, &labels, &tasks,
                           &modalities);
        int64_t correct = 0;
        double loss = 0;
        session->Evaluate(images, labels, valid, &correct, &loss, &tasks, &modalities);
        if (analytics != nullptr) analytics->ObserveNet(session->net().moe_layers(), fine, valid);
        sums[2 * (t * kNumModalities + m)] += static_cast<double>(correct);
        sums[2 * (t * kNumModalities + m) + 1] += loss;
      }
  comm->AllReduceSum(sums.data(), static_cast<int64_t>(sums.size()), GroupKind::kWorld);
  MultiTaskAccuracy out;
  for (int t = 0; t < kNumTasks; ++t)
    for (int m = 0; m < kNumModalities; ++m) {
      out.accuracy[t][m] = sums[2 * (t * kNumModalities + m)] / n;
      out.loss[t][m] = sums[2 * (t * kNumModalities + m) + 1] / n;
    }
  return out;
}

}  // namespace moe
