// The data order does not depend on how the global batch is sharded: four ranks' slices, laid end
// to end, are exactly the one-rank batch; each epoch is a permutation of the data set.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "launcher/batch_sampler.h"
#include "models/nets/moe_placement.h"

namespace moe {
namespace {

TEST(BatchSampler, RankSlicesConcatenateToTheGlobalBatch) {
  BatchSampler one(1000, 5), many(1000, 5);
  for (int64_t step : {0, 3, 31}) {  // step 31 crosses into the second epoch (32 * 32 > 1000)
    const auto global = one.Slice(step, 32, 0, 32);
    std::vector<int64_t> joined;
    for (int r = 0; r < 4; ++r) {
      const auto part = many.Slice(step, 32, r * 8, 8);
      joined.insert(joined.end(), part.begin(), part.end());
    }
    EXPECT_EQ(joined, global) << "step " << step;
  }
}

TEST(BatchSampler, EachEpochIsAPermutation) {
  BatchSampler s(100, 9);
  auto epoch0 = s.Slice(0, 100, 0, 100);
  auto epoch1 = s.Slice(1, 100, 0, 100);
  EXPECT_NE(epoch0, epoch1);  // reshuffled
  std::sort(epoch0.begin(), epoch0.end());
  std::sort(epoch1.begin(), epoch1.end());
  std::vector<int64_t> all(100);
  std::iota(all.begin(), all.end(), 0);
  EXPECT_EQ(epoch0, all);
  EXPECT_EQ(epoch1, all);
}

TEST(BatchSampler, SeedChangesTheOrder) {
  BatchSampler a(100, 1), b(100, 2);
  EXPECT_NE(a.Slice(0, 10, 0, 10), b.Slice(0, 10, 0, 10));
}

// Case 8 (models/moe/README.md): 12 blocks, Every-2 -> {1,3,5,7,9,11}; Last-2 -> {9,11};
// conditional even placement -> {0,2,...,10}.
TEST(Placement, SeedCase8) {
  proto::ModelConfig m;
  m.set_num_layers(12);
  m.set_use_moe(true);
  EXPECT_EQ(MoeBlockIndices(m), (std::set<int>{1, 3, 5, 7, 9, 11}));
  m.mutable_moe()->set_placement(proto::MoeConfig::LAST_N);
  m.mutable_moe()->set_last_n(2);
  EXPECT_EQ(MoeBlockIndices(m), (std::set<int>{9, 11}));
  EXPECT_EQ(EvenBlockIndices(12), (std::set<int>{0, 2, 4, 6, 8, 10}));
  m.set_use_moe(false);
  EXPECT_TRUE(MoeBlockIndices(m).empty());
}

}  // namespace
}  // namespace moe
