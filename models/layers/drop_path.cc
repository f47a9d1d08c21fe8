#include "models/layers/drop_path.h"

#include <glog/logging.h>

#include "core/rng.h"

namespace moe {

uint64_t DropPathStepKey(uint64_t seed, int64_t step) {
  return MixKey(MixKey(seed, HashString("drop_path")), static_cast<uint64_t>(step));
}

float DropPathRateOfBlock(float rate, int block, int blocks) {
  if (blocks <= 1) return rate;
  return rate * static_cast<float>(block) / static_cast<float>(blocks - 1);
}

bool DropPathKeeps(uint64_t step_key, int residual, int64_t image, float rate) {
  const CounterRng rng(MixKey(step_key, static_cast<uint64_t>(residual)));
  return rng.Uniform(static_cast<uint64_t>(image)) >= rate;
}

DropPath::DropPath(float rate, int residual, const DropPathContext* context)
    : rate_(rate), residual_(residual), context_(context) {
  CHECK(rate >= 0.f && rate < 1.f) << "DropPath: rate " << rate << " outside [0, 1)";
  CHECK(context != nullptr) << "DropPath: no context";
}

Tensor DropPath::Forward(const Tensor& x) {
  scales_.clear();
  if (!context_->training || rate_ == 0.f) return x;
  const float kept = 1.f / (1.f - rate_);
  for (int64_t b = 0; b < context_->batch_images; ++b)
    scales_.push_back(
        DropPathKeeps(context_->step_key, residual_, context_->first_image + b, rate_) ? kept
                                                                                        : 0.f);
  const Tensor host = Tensor::FromVector({static_cast<int64_t>(scales_.size())}, scales_);
  if (x.device() == Device::kCPU) {
    scales_on_device_ = host;
  } else {
    scales_on_device_ = Tensor(host.shape(), x.device());
    scales_on_device_.CopyFrom(host);
  }
  return BackendFor(x.device()).ScaleSegments(x, scales_on_device_);
}

Tensor DropPath::Backward(const Tensor& dy) {
  if (scales_.empty()) return dy;  // the identity Forward
  CheckSameDevice("DropPath", dy.device(), scales_on_device_.device());
  return BackendFor(dy.device()).ScaleSegments(dy, scales_on_device_);
}

}  // namespace moe
