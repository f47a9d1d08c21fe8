#include "launcher/batch_sampler.h"

#include <glog/logging.h>

#include <numeric>

#include "core/rng.h"

namespace moe {

BatchSampler::BatchSampler(int64_t dataset_size, uint64_t seed) : size_(dataset_size), seed_(seed) {
  CHECK_GT(dataset_size, 0);
}

const std::vector<int64_t>& BatchSampler::Permutation(int64_t epoch) {
  if (epoch != cached_epoch_) {
    perm_.resize(size_);
    std::iota(perm_.begin(), perm_.end(), 0);
    CounterRng rng(MixKey(MixKey(seed_, HashString("data_order")), static_cast<uint64_t>(epoch)));
    for (int64_t i = size_ - 1; i > 0; --i) {
      int64_t j = static_cast<int64_t>(rng.Uniform(static_cast<uint64_t>(i)) * (i + 1));
      if (j > i) j = i;
      std::swap(perm_[i], perm_[j]);
    }
    cached_epoch_ = epoch;
  }
  return perm_;
}

std::vector<int64_t> BatchSampler::Slice(int64_t step, int64_t global_batch, int64_t first,
                                         int64_t count) {
  std::vector<int64_t> out;
  out.reserve(count);
  for (int64_t i = 0; i < count; ++i) {
    const int64_t pos = step * global_batch + first + i;
    out.push_back(Permutation(pos / size_)[pos % size_]);
  }
  return out;
}

}  // namespace moe
