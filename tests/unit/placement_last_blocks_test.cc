// LAST_BLOCKS placement (Mobile V-MoE: the last L blocks, consecutive, odd or even), next to the
// V-MoE placements it must not disturb (models/moe/README.md case 8 is in batch_sampler_test.cc).
#include <gtest/gtest.h>

#include "models/nets/moe_placement.h"

namespace moe {
namespace {

proto::ModelConfig Model(int layers, proto::MoeConfig::Placement placement, int n) {
  proto::ModelConfig m;
  m.set_num_layers(layers);
  m.set_use_moe(true);
  m.mutable_moe()->set_placement(placement);
  m.mutable_moe()->set_last_n(n);
  return m;
}

TEST(PlacementLastBlocks, LastTwoOfTwelveAndOfFour) {
  EXPECT_EQ(MoeBlockIndices(Model(12, proto::MoeConfig::LAST_BLOCKS, 2)), (std::set<int>{10, 11}));
  EXPECT_EQ(MoeBlockIndices(Model(4, proto::MoeConfig::LAST_BLOCKS, 2)), (std::set<int>{2, 3}));
  EXPECT_EQ(MoeBlockIndices(Model(5, proto::MoeConfig::LAST_BLOCKS, 3)), (std::set<int>{2, 3, 4}));
}

TEST(PlacementLastBlocks, DiffersFromLastNOfTheOddBlocks) {
  // LAST_N counts odd blocks only; LAST_BLOCKS counts every block.
  EXPECT_EQ(MoeBlockIndices(Model(12, proto::MoeConfig::LAST_N, 2)), (std::set<int>{9, 11}));
  EXPECT_EQ(MoeBlockIndices(Model(12, proto::MoeConfig::EVERY_2, 2)),
            (std::set<int>{1, 3, 5, 7, 9, 11}));
}

TEST(PlacementLastBlocks, ClampedToTheNetAndEmptyWhenDense) {
  EXPECT_EQ(MoeBlockIndices(Model(3, proto::MoeConfig::LAST_BLOCKS, 7)), (std::set<int>{0, 1, 2}));
  EXPECT_TRUE(MoeBlockIndices(Model(4, proto::MoeConfig::LAST_BLOCKS, 0)).empty());
  proto::ModelConfig dense = Model(4, proto::MoeConfig::LAST_BLOCKS, 2);
  dense.set_use_moe(false);
  EXPECT_TRUE(MoeBlockIndices(dense).empty());
}

}  // namespace
}  // namespace moe
