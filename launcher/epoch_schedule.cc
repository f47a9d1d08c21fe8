#include "launcher/epoch_schedule.h"

#include <glog/logging.h>

#include <cmath>
#include <limits>
#include <sstream>

namespace moe {

int64_t EpochImages(const proto::TrainConfig& config) {
  const int64_t limit = config.data().train_images_limit();
  return limit > 0 ? limit : kFashionMnistTrainImages;
}

int64_t StepsForEpochs(double epochs, int64_t epoch_images, int64_t global_batch) {
  CHECK_GT(global_batch, 0);
  // Integer ceiling where the epochs are whole (exact for any size); fractions through double.
  if (epochs == std::floor(epochs)) {
    const int64_t images = static_cast<int64_t>(epochs) * epoch_images;
    return (images + global_batch - 1) / global_batch;
  }
  return static_cast<int64_t>(std::ceil(epochs * epoch_images / global_batch));
}

std::string ResolveEpochSchedule(proto::TrainConfig* config, int world_size) {
  const proto::RecipeConfig& r = config->recipe();
  const int64_t global_batch = static_cast<int64_t>(config->data().batch_per_rank()) * world_size;
  std::ostringstream errors;
  // `steps: 0` reads as "not set", so an --override can switch a config that sets steps to
  // epochs ('steps: 0 recipe { epochs: 3 }').
  if (r.epochs() > 0 && config->has_steps() && config->steps() != 0)
    errors << "config error: steps=" << config->steps() << " and recipe.epochs=" << r.epochs()
           << ": give one of them (recipe.epochs sets steps; the --steps flag may still override "
              "it)\n";
  if (r.warmup_epochs() > 0 && config->optimizer().has_warmup_steps() &&
      config->optimizer().warmup_steps() != 0)
    errors << "config error: optimizer.warmup_steps=" << config->optimizer().warmup_steps()
           << " and recipe.warmup_epochs=" << r.warmup_epochs() << ": give one of them\n";
  std::string out = errors.str();
  if (!out.empty()) {
    out.pop_back();
    return out;
  }
  if (global_batch <= 0) return "";  // ValidateTrainConfig names data.batch_per_rank
  const int64_t epoch_images = EpochImages(*config);
  if (r.epochs() > 0 && epoch_images > 0) {
    const int64_t steps = StepsForEpochs(r.epochs(), epoch_images, global_batch);
    if (steps > std::numeric_limits<int32_t>::max())
      return "config error: recipe.epochs=" + std::to_string(r.epochs()) + ": " +
             std::to_string(steps) + " steps, more than `steps` holds (2^31 - 1)";
    config->set_steps(static_cast<int32_t>(steps));
  }
  if (r.warmup_epochs() > 0 && std::isfinite(r.warmup_epochs()) && epoch_images > 0)
    config->mutable_optimizer()->set_warmup_steps(
        static_cast<int32_t>(StepsForEpochs(r.warmup_epochs(), epoch_images, global_batch)));
  return "";
}

EpochEvaluations::EpochEvaluations(int64_t epoch_images, int64_t global_batch)
    : epoch_images_(epoch_images), global_batch_(global_batch) {
  CHECK_GT(epoch_images, 0);
  CHECK_GT(global_batch, 0);
}

int64_t EpochEvaluations::EpochEndingAt(int64_t steps_done) const {
  if (steps_done <= 0) return 0;
  // Epochs completed after `steps_done` steps vs one step earlier.
  const int64_t now = steps_done * global_batch_ / epoch_images_;
  const int64_t before = (steps_done - 1) * global_batch_ / epoch_images_;
  return now > before ? now : 0;
}

void EpochEvaluations::Record(int64_t epoch, double accuracy) {
  if (best_epoch_ == 0 || accuracy > best_accuracy_) {
    best_accuracy_ = accuracy;
    best_epoch_ = epoch;
  }
}

}  // namespace moe
