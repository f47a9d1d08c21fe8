#include "models/nets/multitask.h"

#include <glog/logging.h>

#include <fstream>
#include <set>
#include <sstream>

#include "core/rng.h"

namespace moe {

std::vector<int> DefaultSuperclassMap() {
  //       T-shirt Trouser Pullover Dress Coat Sandal Shirt Sneaker Bag Ankle-boot
  return {0, 1, 0, 1, 0, 2, 0, 2, 3, 2};
}

std::vector<std::pair<int, int>> TaskLogitRanges(const proto::ModelConfig& model) {
  const int S = model.conditional().num_superclasses();
  return {{0, kFashionMnistClasses}, {kFashionMnistClasses, kFashionMnistClasses + S}};
}

namespace {
// One line of a super-class file: "class superclass" after '#' comments are cut; blank lines
// are skipped. Fills superclass_of[class].
bool ParseSuperclassLine(const std::string& line, const std::string& where,
                         int num_superclasses, std::vector<int>* superclass_of,
                         std::string* error) {
  const std::string body = line.substr(0, line.find('#'));
  std::istringstream ls(body);
  int c = 0, s = 0;
  if (!(ls >> c)) return true;  // blank or comment
  std::string rest;
  if (!(ls >> s) || (ls >> rest)) {
    *error = where + ": expected \"class superclass\"";
    return false;
  }
  if (c < 0 || c >= kFashionMnistClasses || s < 0 || s >= num_superclasses) {
    *error = where + ": class " + std::to_string(c) + " super-class " + std::to_string(s) +
             ": need class in [0, 10) and super-class in "
             "[0, model.conditional.num_superclasses=" + std::to_string(num_superclasses) + ")";
    return false;
  }
  if ((*superclass_of)[c] >= 0) {
    *error = where + ": class " + std::to_string(c) + " mapped twice";
    return false;
  }
  (*superclass_of)[c] = s;
  return true;
}

// Every class mapped, every super-class used.
bool CheckSuperclassMapComplete(const std::string& path, int num_superclasses,
                                const std::vector<int>& superclass_of, std::string* error) {
  std::set<int> used;
  for (int c = 0; c < kFashionMnistClasses; ++c) {
    if (superclass_of[c] < 0) {
      *error = path + ": class " + std::to_string(c) + " has no super-class";
      return false;
    }
    used.insert(superclass_of[c]);
  }
  if (static_cast<int>(used.size()) != num_superclasses) {
    *error = path + ": uses " + std::to_string(used.size()) + " super-classes, " +
             "model.conditional.num_superclasses=" + std::to_string(num_superclasses);
    return false;
  }
  return true;
}

bool ReadSuperclassFile(const std::string& path, int num_superclasses,
                        std::vector<int>* superclass_of, std::string* error) {
  std::ifstream in(path);
  if (!in) {
    *error = "model.conditional.superclass_file=" + path + ": cannot open file";
    return false;
  }
  superclass_of->assign(kFashionMnistClasses, -1);
  std::string line;
  int line_no = 0;
  while (std::getline(in, line))
    if (!ParseSuperclassLine(line, path + ":" + std::to_string(++line_no), num_superclasses,
                             superclass_of, error))
      return false;
  return CheckSuperclassMapComplete(path, num_superclasses, *superclass_of, error);
}
}  // namespace

bool BuildMultiTaskSpec(const proto::TrainConfig& config, MultiTaskSpec* spec,
                        std::string* error) {
  const proto::ConditionalConfig& cc = config.model().conditional();
  spec->seed = config.seed();
  spec->num_superclasses = cc.num_superclasses();
  if (!cc.superclass_file().empty())
    return ReadSuperclassFile(cc.superclass_file(), spec->num_superclasses,
                              &spec->superclass_of, error);
  spec->superclass_of = DefaultSuperclassMap();
  if (spec->num_superclasses != 4) {
    *error = "model.conditional.num_superclasses=" + std::to_string(spec->num_superclasses) +
             ": the built-in super-class map has 4; set model.conditional.superclass_file";
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

}  // namespace moe
