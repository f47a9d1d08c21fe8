#include "launcher/train_loop.h"

#include <glog/logging.h>

#include "launcher/batch_sampler.h"
#include "launcher/test_set_eval.h"

namespace moe {

int64_t RunTrainLoop(TrainingSession* session, const TrainStream& stream, int64_t first_step,
                     int64_t end_step, StepHooks* hooks) {
  CHECK(stream.data != nullptr && hooks != nullptr);
  BatchSampler sampler(stream.stream_images, stream.seed);
  const int64_t global_batch = session->global_batch();
  const int64_t first_row = static_cast<int64_t>(stream.rank) * stream.batch_per_rank;
  TrainBatch batch;
  for (int64_t step = first_step; step < end_step; ++step) {
    hooks->BeforeStep(step);
    GatherBatch(*stream.data, sampler.Slice(step, global_batch, first_row, stream.batch_per_rank),
                &batch.images, &batch.labels);
    AugmentBatch(stream.augment, stream.seed, step, first_row, &batch.images);
    hooks->OnGathered(step, &batch);
    // Stream positions, not rank-local rows: whatever the head keys on them is the same on any
    // number of ranks.
    session->task_head().MakeTrainingBatch(step * global_batch + first_row, &batch.images,
                                           &batch.labels, &batch.side);
    const StepStats stats = session->TrainStep(step, batch.images, batch.labels, batch.side);
    if (!hooks->AfterStep(step, stats)) return step + 1;
  }
  return end_step;
}

}  // namespace moe
