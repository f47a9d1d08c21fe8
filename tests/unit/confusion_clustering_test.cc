// The super-class tool's maths (launcher/confusion_clustering.h) on hand-made confusions, and
// the file it writes read back by the Mobile V-MoE parser.
#include "launcher/confusion_clustering.h"

#include <gtest/gtest.h>

#include <array>
#include <sstream>

#include "models/nets/mobile_vmoe.h"

namespace moe {
namespace {

// counts from a list of (true, predicted, how many).
std::vector<int64_t> Counts(int C, const std::vector<std::array<int, 3>>& cells) {
  std::vector<int64_t> c(C * C, 0);
  for (const auto& [i, j, n] : cells) c[i * C + j] += n;
  return c;
}

TEST(ConfusionClustering, CountsTrueByPredicted) {
  const auto c = CountConfusions({0, 0, 1, 2, 2, 2}, {0, 1, 1, 2, 0, 2}, 3);
  EXPECT_EQ(c, (std::vector<int64_t>{1, 1, 0, 0, 1, 0, 1, 0, 2}));
}

TEST(ConfusionClustering, GraphIsSymmetricRatesWithZeroDiagonal) {
  // Class 0 has 1000 images, class 1 only 20: 10 of class 0 look like 1 (1%), 10 of class 1
  // look like 0 (50%). Raw counts would call the pair's confusion symmetric; the rates do not.
  const auto counts = Counts(3, {{0, 0, 990}, {0, 1, 10}, {1, 1, 10}, {1, 0, 10}, {2, 2, 50}});
  const auto w = ConfusionGraph(counts, 3);
  EXPECT_DOUBLE_EQ(w[0 * 3 + 1], 0.01 + 0.5);
  EXPECT_DOUBLE_EQ(w[1 * 3 + 0], w[0 * 3 + 1]);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(w[i * 3 + i], 0.0);
  EXPECT_EQ(w[0 * 3 + 2], 0.0);
  // A class with no images adds nothing (no division by zero).
  const auto empty = ConfusionGraph(Counts(2, {{0, 1, 5}, {0, 0, 5}}), 2);
  EXPECT_DOUBLE_EQ(empty[1], 0.5);
}

// Six classes, 100 images each: {0, 1, 2} confuse each other, {3, 4} confuse each other, 5 is
// nearly never confused (a little with 1 and 3).
std::vector<int64_t> SixClasses() {
  return Counts(6, {{0, 0, 68}, {0, 1, 20}, {0, 2, 12},
                    {1, 1, 73}, {1, 0, 15}, {1, 2, 10}, {1, 5, 2},
                    {2, 2, 82}, {2, 0, 8},  {2, 1, 10},
                    {3, 3, 73}, {3, 4, 25}, {3, 5, 2},
                    {4, 4, 75}, {4, 3, 25},
                    {5, 5, 97}, {5, 1, 1},  {5, 3, 2}});
}

TEST(ConfusionClustering, AverageLinkageFindsTheConfusedGroups) {
  const auto w = ConfusionGraph(SixClasses(), 6);
  EXPECT_EQ(AverageLinkageClusters(w, 6, 3), (std::vector<int>{0, 0, 0, 1, 1, 2}));
  // Two groups: the weakly attached class 5 joins {3, 4} (link (0.04 + 0) / 2 = 0.02) rather
  // than {0, 1, 2} (link 0.03 / 3 = 0.01); {0,1,2} vs {3,4} has link 0.
  EXPECT_EQ(AverageLinkageClusters(w, 6, 2), (std::vector<int>{0, 0, 0, 1, 1, 1}));
  // As many groups as classes: every class alone; one group: all together.
  EXPECT_EQ(AverageLinkageClusters(w, 6, 6), (std::vector<int>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(AverageLinkageClusters(w, 6, 1), (std::vector<int>(6, 0)));
}

TEST(ConfusionClustering, AverageNotSingleLinkage) {
  // 0-1 strongly linked, 2 tied to 1 by one strong edge but not to 0; 3 is linked moderately to
  // both 0 and 1. Single linkage would add 2 to {0, 1} (max edge 0.5); average linkage weighs
  // {0,1}-2 at (0 + 0.5) / 2 = 0.25 and {0,1}-3 at (0.4 + 0.4) / 2 = 0.4, so 3 joins.
  std::vector<double> w(16, 0.0);
  auto set = [&w](int i, int j, double v) { w[i * 4 + j] = w[j * 4 + i] = v; };
  set(0, 1, 1.0);
  set(1, 2, 0.5);
  set(0, 3, 0.4);
  set(1, 3, 0.4);
  EXPECT_EQ(AverageLinkageClusters(w, 4, 2), (std::vector<int>{0, 0, 1, 0}));
}

TEST(ConfusionClustering, TiesGoToTheSmallerIdsAndIdsFollowTheSmallestClass) {
  // No confusion at all: every link ties at 0, so merging goes (0,1), then ({0,1},2), ...
  const std::vector<double> zero(25, 0.0);
  EXPECT_EQ(AverageLinkageClusters(zero, 5, 3), (std::vector<int>{0, 0, 0, 1, 2}));
  // Group {1, 3} vs {0, 2, 4}: the group holding class 0 is super-class 0.
  std::vector<double> w(25, 0.0);
  auto set = [&w](int i, int j, double v) { w[i * 5 + j] = w[j * 5 + i] = v; };
  set(1, 3, 0.9);
  set(0, 2, 0.8);
  set(2, 4, 0.7);
  set(0, 4, 0.7);
  EXPECT_EQ(AverageLinkageClusters(w, 5, 2), (std::vector<int>{0, 1, 0, 1, 0}));
}

TEST(ConfusionClustering, WrittenFileParsesBack) {
  const std::vector<int> map = {0, 0, 0, 1, 1, 2};
  const std::string text =
      FormatSuperclassFile(map, {"a", "b", "c", "d", "e", "f"}, {"made by a test", "second line"});
  EXPECT_NE(text.find("# made by a test\n# second line\n"), std::string::npos) << text;
  EXPECT_NE(text.find("# super-class 1: 3 d, 4 e\n"), std::string::npos) << text;
  std::istringstream in(text);
  std::vector<int> back;
  std::string err;
  ASSERT_TRUE(ParseSuperclassMap(in, "written", 6, 3, &back, &err)) << err << "\n" << text;
  EXPECT_EQ(back, map);
}

}  // namespace
}  // namespace moe
