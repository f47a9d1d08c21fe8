// The training loop moe_train and superclass_tool share. Each step gathers this rank's slice of
// the step's global batch (launcher/batch_sampler.h), lets the net's task head make it the net's
// batch (TaskHead::MakeTrainingBatch: images, target logit columns, per-image side information)
// and trains it (TrainingSession::TrainStep). Nothing here knows the model family. What a program
// does around the steps (metrics, progress lines, evaluations, checkpoints, stop signals, fault
// injection) it supplies as StepHooks.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "launcher/augmentation.h"
#include "launcher/idx_dataset.h"
#include "launcher/training_session.h"
#include "models/nets/net.h"

namespace moe {

// One rank's batch of one step.
struct TrainBatch {
  Tensor images;            // [batch_per_rank, pixels], host
  std::vector<int> labels;  // class labels as gathered; logit columns once the head made it
  ImageSideInfo side;       // filled by the task head
};

// Where the batches come from: the training stream over the first `stream_images` images of
// `data` (BatchSampler(stream_images, seed)); world rank `rank` takes rows
// [rank * batch_per_rank, (rank + 1) * batch_per_rank) of each global batch. The gathered images
// are augmented (launcher/augmentation.h) before any hook or the task head sees them.
struct TrainStream {
  const ImageDataset* data = nullptr;
  int64_t stream_images = 0;
  uint64_t seed = 0;
  int rank = 0;
  int64_t batch_per_rank = 0;
  AugmentOptions augment;  // recipe.crop_padding / horizontal_flip; off by default
};

class StepHooks {
 public:
  virtual ~StepHooks() = default;
  // Before the step's batch is gathered.
  virtual void BeforeStep(int64_t step) { (void)step; }
  // This rank's gathered rows (class labels), before the task head makes them the net's batch.
  virtual void OnGathered(int64_t step, TrainBatch* batch) {
    (void)step;
    (void)batch;
  }
  // After the step's update, with its global statistics; false ends the loop after this step.
  virtual bool AfterStep(int64_t step, const StepStats& stats) = 0;
};

// Trains steps [first_step, end_step). Returns the number of steps done: end_step, or the step
// after the one whose AfterStep ended the loop.
int64_t RunTrainLoop(TrainingSession* session, const TrainStream& stream, int64_t first_step,
                     int64_t end_step, StepHooks* hooks);

}  // namespace moe
