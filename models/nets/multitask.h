// Multi-task Fashion-MNIST for the conditional MoE family (Uni-Perceiver-MoE;
// models/moe/README.md, "Conditional routing"): the data side of the family's task head
// (multitask_head.h), which the trainer drives without knowing it is multi-task.
//
// Every sample carries a task and a modality:
//   task 0 "fine":   the 10 Fashion-MNIST classes, scored on logits [0, 10)
//   task 1 "coarse": S super-classes, scored on logits [10, 10 + S) (one head per task; the loss
//                    of a sample is the cross-entropy over its task's slice only)
//   modality 0: the image as stored
//   modality 1: a second view of it: rotated 90 degrees clockwise and photometrically inverted
//               (pixel p -> 255 - p), so the two views share no pixel statistics
// Training samples: task and modality are pure functions of (seed, global sample index), the
// index being the sample's position in the training stream (step * global_batch + row of the
// global batch, launcher/batch_sampler.h), so P ranks and one rank assign the same (EP
// invariance), and an image meets every (task, modality) pair over the epochs. Evaluation runs
// the whole test set once per (task, modality) pair (the head's evaluation passes).
//
// Super-classes: ConditionalConfig.superclass_file ("class superclass" per line, '#' comments;
// ids in [0, num_superclasses), every super-class used) or, when empty, the built-in 4-group map
//   0 tops            {0 T-shirt/top, 2 Pullover, 4 Coat, 6 Shirt}
//   1 trouser, dress  {1 Trouser, 3 Dress}   (lower-body and one-piece garments)
//   2 footwear        {5 Sandal, 7 Sneaker, 9 Ankle boot}
//   3 bag             {8 Bag}
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "models/nets/fashion_mnist.h"
#include "proto/moe_ep.pb.h"

namespace moe {

constexpr int kNumTasks = 2;
constexpr int kNumModalities = 2;
constexpr int kTaskFine = 0;
constexpr int kTaskCoarse = 1;

// The built-in class -> super-class map above (10 entries, 4 super-classes).
std::vector<int> DefaultSuperclassMap();

// Logit column range [lo, hi) of each task for a model config: {{0, 10}, {10, 10 + S}}.
std::vector<std::pair<int, int>> TaskLogitRanges(const proto::ModelConfig& model);

struct MultiTaskSpec {
  uint64_t seed = 0;
  int num_superclasses = 4;
  std::vector<int> superclass_of;  // [10]
  // The target column of a sample of class `label` under `task` (a global logit index).
  int Target(int task, int label) const {
    return task == kTaskFine ? label : kFashionMnistClasses + superclass_of[label];
  }
};

// Reads the super-class map (file or built-in) and checks it against num_superclasses. Returns
// false with a one-line message naming the file and the problem.
bool BuildMultiTaskSpec(const proto::TrainConfig& config, MultiTaskSpec* spec, std::string* error);

// Task and modality of training sample `index` (its position in the training stream).
int SampleTask(uint64_t seed, int64_t index);
int SampleModality(uint64_t seed, int64_t index);

// In place on one normalised image (launcher/idx_dataset.h): rotate 90 degrees clockwise and
// invert. Inversion in normalised units: (1 - q - m) / s = (1 - 2 m) / s - n for n = (q - m) / s.
void ToSecondView(float* image, int rows, int cols);

// Turns a gathered training batch (images [n, pixels], class labels) of stream positions
// [first_index, first_index + n) into a multi-task batch: second-view images where the modality
// is 1, labels replaced by the task's target column, task and modality filled.
void MakeMultiTaskBatch(const MultiTaskSpec& spec, int rows, int cols, int64_t first_index,
                        Tensor* images, std::vector<int>* labels, std::vector<int>* task,
                        std::vector<int>* modality);

// The same for one fixed (task, modality) pair (evaluation).
void SetTaskAndModality(const MultiTaskSpec& spec, int rows, int cols, int task, int modality,
                        Tensor* images, std::vector<int>* labels, std::vector<int>* tasks,
                        std::vector<int>* modalities);

}  // namespace moe
