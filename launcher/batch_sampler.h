// Which training images form the global batch of each step, and which slice a rank takes.
//
// The data order is a function of (seed, epoch) alone: a Fisher-Yates shuffle driven by the
// counter-based RNG. The global batch of step s is positions [s*GB, (s+1)*GB) of the endless
// stream of epochs, and world rank r takes rows [r*b, (r+1)*b) of it. One rank with a global
// batch of P*b therefore sees exactly the images that P ranks see together.
#pragma once

#include <cstdint>
#include <vector>

namespace moe {

class BatchSampler {
 public:
  BatchSampler(int64_t dataset_size, uint64_t seed);
  // Dataset indices of rows [first, first + count) of step `step`'s global batch.
  std::vector<int64_t> Slice(int64_t step, int64_t global_batch, int64_t first, int64_t count);

 private:
  const std::vector<int64_t>& Permutation(int64_t epoch);
  int64_t size_;
  uint64_t seed_;
  int64_t cached_epoch_ = -1;
  std::vector<int64_t> perm_;
};

}  // namespace moe
