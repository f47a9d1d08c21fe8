// The schedule in epochs (recipe.epochs, recipe.warmup_epochs) and the per-epoch evaluation
// bookkeeping (recipe.eval_every_epoch).
//
// An epoch is E training images: data.train_images_limit when set, else Fashion-MNIST's 60,000.
// With the global batch G = data.batch_per_rank x world size, N epochs are ceil(N E / G) steps
// and epoch e (1-based) ends after step ceil(e E / G) (the step whose batch holds the epoch's
// last image; the data stream runs on into the next epoch inside that batch).
#pragma once

#include <cstdint>
#include <string>

#include "proto/moe_ep.pb.h"

namespace moe {

constexpr int64_t kFashionMnistTrainImages = 60000;

// E: images per epoch.
int64_t EpochImages(const proto::TrainConfig& config);

// ceil(epochs * epoch_images / global_batch); epochs may be fractional (warm-up).
int64_t StepsForEpochs(double epochs, int64_t epoch_images, int64_t global_batch);

// Turns recipe.epochs into `steps` and recipe.warmup_epochs into optimizer.warmup_steps, for a
// world of `world_size` ranks. Returns "" or the config errors (one per line): `steps` set
// together with recipe.epochs, optimizer.warmup_steps set together with recipe.warmup_epochs
// (a field set to 0 counts as not set, so an override can switch a config over).
// Out-of-range values are left for ValidateTrainConfig, which runs after this. Call it before
// the --steps flag replaces `steps`.
std::string ResolveEpochSchedule(proto::TrainConfig* config, int world_size);

// Which epoch ends with a step, and the best of the per-epoch test accuracies.
class EpochEvaluations {
 public:
  EpochEvaluations(int64_t epoch_images, int64_t global_batch);
  // The epoch (1-based) whose last image is in the batch of the step that brings the count of
  // steps done to `steps_done`, or 0 when no epoch ends there.
  int64_t EpochEndingAt(int64_t steps_done) const;
  void Record(int64_t epoch, double accuracy);
  bool any() const { return best_epoch_ > 0; }
  double best_accuracy() const { return best_accuracy_; }
  int64_t best_epoch() const { return best_epoch_; }  // the first epoch that reached the best

 private:
  int64_t epoch_images_, global_batch_;
  double best_accuracy_ = -1;
  int64_t best_epoch_ = 0;
};

}  // namespace moe
