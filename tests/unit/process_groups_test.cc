// The EP x DP grid: ranks, sizes and group membership for every valid (world, ep_size), and one
// message naming parallel.ep_size, its value and the world size for every invalid one.
#include "comm/process_groups.h"

#include <gtest/gtest.h>

#include <set>
#include <string>

#include "comm/communicator.h"

namespace moe {
namespace {

TEST(ProcessGroups, FourRanksEpTwo) {
  const int ep[4] = {0, 1, 0, 1}, dp[4] = {0, 0, 1, 1};
  for (int r = 0; r < 4; ++r) {
    const ProcessGroupLayout l = MakeLayout(4, r, 2);
    EXPECT_EQ(l.world_size, 4);
    EXPECT_EQ(l.world_rank, r);
    EXPECT_EQ(l.ep_size, 2);
    EXPECT_EQ(l.dp_size, 2);
    EXPECT_EQ(l.ep_rank, ep[r]) << r;
    EXPECT_EQ(l.dp_rank, dp[r]) << r;
  }
  // EP groups {0,1},{2,3}; DP groups {0,2},{1,3}.
  const ProcessGroupLayout l3 = MakeLayout(4, 3, 2);
  EXPECT_EQ(ExpertGroupMemberWorldRank(l3, 0), 2);
  EXPECT_EQ(ExpertGroupMemberWorldRank(l3, 1), 3);
  EXPECT_EQ(DataGroupMemberWorldRank(l3, 0), 1);
  EXPECT_EQ(DataGroupMemberWorldRank(l3, 1), 3);
}

TEST(ProcessGroups, EveryValidLayoutTilesTheWorld) {
  for (int world = 1; world <= 12; ++world) {
    for (int ep = 1; ep <= world; ++ep) {
      if (world % ep != 0) continue;
      std::set<std::pair<int, int>> cells;
      for (int r = 0; r < world; ++r) {
        ProcessGroupLayout l;
        std::string error = "untouched";
        ASSERT_TRUE(MakeLayout(world, r, ep, &l, &error)) << error;
        EXPECT_EQ(error, "untouched");
        EXPECT_EQ(l.dp_size * l.ep_size, world);
        EXPECT_EQ(l.dp_rank * ep + l.ep_rank, r);
        EXPECT_TRUE(cells.insert({l.dp_rank, l.ep_rank}).second);
        EXPECT_EQ(ExpertGroupMemberWorldRank(l, l.ep_rank), r);
        EXPECT_EQ(DataGroupMemberWorldRank(l, l.dp_rank), r);
      }
      EXPECT_EQ(static_cast<int>(cells.size()), world);
    }
  }
}

TEST(ProcessGroups, EpOneIsPureDataParallelAndEpWorldIsPureExpertParallel) {
  const ProcessGroupLayout a = MakeLayout(4, 3, 1);
  EXPECT_EQ(a.ep_rank, 0);
  EXPECT_EQ(a.dp_rank, 3);
  EXPECT_EQ(a.dp_size, 4);
  const ProcessGroupLayout b = MakeLayout(4, 3, 4);
  EXPECT_EQ(b.ep_rank, 3);
  EXPECT_EQ(b.dp_rank, 0);
  EXPECT_EQ(b.dp_size, 1);
}

TEST(ProcessGroups, InvalidEpSizeNamesTheFieldItsValueAndTheWorldSize) {
  struct Case { int world, ep; const char* value; };
  for (const Case c : {Case{4, 3, "parallel.ep_size=3"}, Case{4, 0, "parallel.ep_size=0"},
                       Case{4, -2, "parallel.ep_size=-2"}, Case{4, 8, "parallel.ep_size=8"},
                       Case{6, 4, "parallel.ep_size=4"}}) {
    ProcessGroupLayout l;
    l.world_size = -7;  // must stay untouched on failure
    std::string error;
    EXPECT_FALSE(MakeLayout(c.world, 0, c.ep, &l, &error));
    EXPECT_NE(error.find(c.value), std::string::npos) << error;
    EXPECT_NE(error.find("world size " + std::to_string(c.world)), std::string::npos) << error;
    EXPECT_EQ(l.world_size, -7);
    EXPECT_EQ(LayoutError(c.world, 0, c.ep), error);
  }
  EXPECT_EQ(LayoutError(4, 0, 2), "");
}

TEST(ProcessGroups, InvalidWorldOrRank) {
  std::string error;
  ProcessGroupLayout l;
  EXPECT_FALSE(MakeLayout(0, 0, 1, &l, &error));
  EXPECT_NE(error.find("world size 0"), std::string::npos) << error;
  EXPECT_FALSE(MakeLayout(4, 4, 1, &l, &error));
  EXPECT_NE(error.find("world rank 4"), std::string::npos) << error;
  EXPECT_FALSE(MakeLayout(4, -1, 1, &l, &error));
}

TEST(ProcessGroupsDeathTest, CheckingOverloadFailsWithTheMessage) {
  EXPECT_DEATH(MakeLayout(4, 0, 3), "parallel.ep_size=3: the world size 4 is not a multiple");
}

TEST(GroupNames, AreDistinctAndReadable) {
  EXPECT_STREQ(GroupName(GroupKind::kWorld), "world");
  EXPECT_STREQ(GroupName(GroupKind::kExpert), "expert");
  EXPECT_STREQ(GroupName(GroupKind::kData), "data");
}

}  // namespace
}  // namespace moe
