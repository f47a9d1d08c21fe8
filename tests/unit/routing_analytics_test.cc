// Routing analytics: expert x class counts from kept assignments (hand-made lists and a real
// MoE layer), the over-ranks reduction, and the table, JSON and heatmaps made from them.
#include "launcher/routing_analytics.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "comm/self_communicator.h"
#include "launcher/routing_heatmap_svg.h"
#include "models/moe/moe_layer.h"
#include "tests/unit/grad_check.h"

namespace moe {
namespace {

using Assignments = std::vector<std::pair<int64_t, int>>;  // (row, expert)

AssignmentVisitor Visit(const Assignments& list) {
  return [list](const KeptAssignmentFn& fn) {
    for (const auto& a : list) fn(a.first, a.second, 0.5f);
  };
}

// 3 experts, 4 classes, 2 rows per image; the batch holds 4 images of which the last pads.
RoutingAnalytics OneLayer() {
  return RoutingAnalytics({"blocks.1.moe"}, {3}, {2}, 4);
}
const std::vector<int> kLabels = {0, 1, 1, 3};
const Assignments kKept = {
    {0, 0}, {0, 1}, {1, 0},  // image 0 (class 0)
    {2, 2}, {3, 2},          // image 1 (class 1)
    {4, 1}, {5, 1}, {5, 2},  // image 2 (class 1)
    {6, 0}, {7, 0},          // image 3: padding, never counted
};

TEST(RoutingAnalytics, CountsRowsAndImagesPerExpertAndClass) {
  RoutingAnalytics a = OneLayer();
  a.Observe(0, kLabels, /*valid=*/3, Visit(kKept));
  const RoutingMatrix& m = a.matrix(0);
  const std::vector<double> counts = {2, 0, 0, 0,   // expert 0
                                      1, 2, 0, 0,   // expert 1
                                      0, 3, 0, 0};  // expert 2
  const std::vector<double> images = {1, 0, 0, 0,
                                      1, 1, 0, 0,
                                      0, 2, 0, 0};
  EXPECT_EQ(m.counts, counts);
  EXPECT_EQ(m.image_counts, images);
  EXPECT_EQ(m.class_images, (std::vector<double>{1, 2, 0, 0}));
  EXPECT_DOUBLE_EQ(m.RowSharePercent(0, 0), 100.0);  // 2 of image 0's 2 rows
  EXPECT_DOUBLE_EQ(m.RowSharePercent(2, 1), 75.0);   // 3 of class 1's 4 rows
  EXPECT_DOUBLE_EQ(m.RowSharePercent(0, 3), 0.0);    // no image of class 3 observed
}

TEST(RoutingAnalytics, AccumulatesBatchesAndSumsOverRanksOnce) {
  // Stands for a world of two ranks that saw the same batches: every sum doubles.
  struct TwoIdenticalRanks : SelfCommunicator {
    int calls = 0;
    GroupKind group = GroupKind::kData;
    void AllReduceSum(double* data, int64_t count, GroupKind g) override {
      ++calls;
      group = g;
      for (int64_t i = 0; i < count; ++i) data[i] *= 2;
    }
  } comm;
  RoutingAnalytics a({"first", "unmapped", "second"}, {3, 2, 3}, {2, 0, 2}, 4);
  EXPECT_TRUE(a.IsTracked(0));
  EXPECT_FALSE(a.IsTracked(1));  // rows cannot be mapped to images: left out
  for (int batch = 0; batch < 2; ++batch) {
    a.Observe(0, kLabels, 3, Visit(kKept));
    a.Observe(1, kLabels, 3, Visit({{0, 1}}));
    a.Observe(2, kLabels, 4, Visit({{7, 2}}));  // valid = 4: image 3 (class 3) counts here
  }
  a.Reduce(&comm);
  EXPECT_EQ(comm.calls, 1);
  EXPECT_EQ(comm.group, GroupKind::kWorld);
  EXPECT_EQ(a.matrix(0).count(2, 1), 3 * 2 * 2);
  EXPECT_EQ(a.matrix(0).image_count(2, 1), 2 * 2 * 2);
  EXPECT_EQ(a.matrix(0).class_images, (std::vector<double>{4, 8, 0, 0}));
  EXPECT_EQ(a.matrix(1).count(1, 0), 0);
  EXPECT_EQ(a.matrix(2).count(2, 3), 4);
  EXPECT_EQ(a.matrix(2).class_images, (std::vector<double>{4, 8, 0, 4}));
  EXPECT_DOUBLE_EQ(a.matrix(2).RowSharePercent(2, 3), 50.0);  // 1 of image 3's 2 rows
}

TEST(RoutingAnalytics, TableAndJson) {
  RoutingAnalytics a = OneLayer();
  a.Observe(0, kLabels, 3, Visit(kKept));
  const std::string table = FormatRoutingTable(a.matrix(0));
  // Header, one line per expert, the sum line.
  EXPECT_EQ(std::count(table.begin(), table.end(), '\n'), 4) << table;
  EXPECT_NE(table.find("expert"), std::string::npos);
  EXPECT_NE(table.find("  100.0"), std::string::npos) << table;
  EXPECT_NE(table.find("   75.0"), std::string::npos) << table;
  EXPECT_EQ(RoutingMatrixJson(a.matrix(0)),
            "{\"routing_matrix\": {\"layer\": \"blocks.1.moe\", \"rows_per_image\": 2, "
            "\"counts\": [[2, 0, 0, 0], [1, 2, 0, 0], [0, 3, 0, 0]], "
            "\"image_counts\": [[1, 0, 0, 0], [1, 1, 0, 0], [0, 2, 0, 0]], "
            "\"class_images\": [1, 2, 0, 0]}}");
}

TEST(RoutingAnalytics, FashionMnistTableNamesTheClasses) {
  RoutingAnalytics a({"moe"}, {2}, {1}, 10);
  a.Observe(0, {9}, 1, Visit({{0, 1}}));
  const std::string table = FormatRoutingTable(a.matrix(0));
  EXPECT_NE(table.find("tshirt"), std::string::npos) << table;
  EXPECT_NE(table.find("boot"), std::string::npos) << table;
}

TEST(RoutingAnalytics, HeatmapLayoutAndColourScale) {
  RoutingAnalytics a = OneLayer();
  a.Observe(0, kLabels, 3, Visit(kKept));
  int w = 0, h = 0;
  double mx = 0;
  const int cell = 8;
  const std::vector<uint8_t> px = RenderRoutingHeatmap(a.matrix(0), cell, &w, &h, &mx);
  EXPECT_DOUBLE_EQ(mx, 100.0);
  EXPECT_EQ(h, 3 * cell + 1);
  EXPECT_EQ(w, 4 * cell + 1 + 2 * cell + 1);  // grid, one-cell gap, colour bar
  ASSERT_EQ(px.size(), static_cast<size_t>(w) * h * 3);
  auto pixel = [&](int e, int c) {  // the centre of cell (expert e, class c)
    const size_t at = ((static_cast<size_t>(e) * cell + cell / 2) * w + c * cell + cell / 2) * 3;
    return std::vector<int>{px[at], px[at + 1], px[at + 2]};
  };
  EXPECT_EQ(pixel(0, 0), (std::vector<int>{253, 231, 37}));  // the maximum: yellow
  EXPECT_EQ(pixel(0, 1), (std::vector<int>{68, 1, 84}));     // zero: dark purple
  const std::vector<int> mid = pixel(2, 1);                  // 75%: between the two
  EXPECT_NE(mid, pixel(0, 0));
  EXPECT_NE(mid, pixel(0, 1));
}

// The SVG heatmap: title, labels and values as text, and the cells coloured on the PNG's scale
// (the same cells as HeatmapLayoutAndColourScale: expert 0 x class 0 is the maximum, 100%).
TEST(RoutingAnalytics, SvgHeatmapIsLabelled) {
  RoutingAnalytics a = OneLayer();
  a.Observe(0, kLabels, 3, Visit(kKept));
  const std::string svg = RoutingHeatmapSvg(a.matrix(0));
  auto has = [&](const std::string& s) { return svg.find(s) != std::string::npos; };
  EXPECT_TRUE(has("layer blocks.1.moe")) << svg;
  EXPECT_TRUE(has(">class 0<") && has(">class 3<")) << "4 classes are numbered";
  EXPECT_TRUE(has(">expert 0<") && has(">expert 2<"));
  EXPECT_FALSE(has(">expert 3<"));
  const RoutingMatrix& m = a.matrix(0);
  for (int e = 0; e < 3; ++e)
    for (int c = 0; c < 4; ++c) {
      char value[32];
      snprintf(value, sizeof(value), ">%.1f</text>", m.RowSharePercent(e, c));
      EXPECT_TRUE(has(value)) << "expert " << e << " class " << c << ": " << value;
    }
  EXPECT_TRUE(has("fill=\"#fde725\"")) << "the maximum in the scale's yellow";
  EXPECT_TRUE(has("fill=\"#440154\"")) << "zero in its purple";
  EXPECT_TRUE(has(">100.0%</text>") && has(">50.0%</text>") && has(">0.0%</text>"))
      << "colour-bar ticks";
  EXPECT_TRUE(has("% of the class's rows"));
  EXPECT_EQ(svg.rfind("</svg>\n"), svg.size() - 7) << "a complete document";
  size_t open = 0, close = 0;
  for (size_t at = 0; (at = svg.find("<text", at)) != std::string::npos; ++at) ++open;
  for (size_t at = 0; (at = svg.find("</text>", at)) != std::string::npos; ++at) ++close;
  EXPECT_EQ(open, close);
}

TEST(RoutingAnalytics, SvgHeatmapNamesFashionMnistClassesAndEscapesTheLayer) {
  RoutingAnalytics a({"moe<&>"}, {2}, {1}, 10);
  a.Observe(0, {9}, 1, Visit({{0, 1}}));
  const std::string svg = RoutingHeatmapSvg(a.matrix(0));
  EXPECT_NE(svg.find(">T-shirt/top<"), std::string::npos);
  EXPECT_NE(svg.find(">Ankle boot<"), std::string::npos);
  EXPECT_NE(svg.find("layer moe&lt;&amp;&gt;:"), std::string::npos) << svg.substr(0, 400);
}

// Through a real layer: every kept assignment of the valid images lands in exactly one cell, so
// the per-expert sums equal the layer's own tokens_per_expert.
TEST(RoutingAnalytics, MatchesTheLayersKeptAssignments) {
  SelfCommunicator comm;
  MoeLayerOptions o;
  o.dim = 6;
  o.hidden = 5;
  o.num_experts = 4;
  o.top_k = 2;
  o.tokens_per_image = 4;
  o.group_tokens = 8;  // two images per routing group
  o.capacity_factor_eval = 1.0;  // small enough that some assignments drop
  MoeLayer layer("moe", o, &comm, 7);
  MoeStepContext ctx;
  ctx.training = false;
  ctx.num_global_groups = 2;
  layer.SetStepContext(ctx);
  layer.Forward(testing::RandomTensor({16, 6}, 5));
  const std::vector<int> labels = {2, 0, 2, 1};
  RoutingAnalytics all({&layer}, 3), three({&layer}, 3);
  all.ObserveNet({&layer}, labels, 4);
  three.ObserveNet({&layer}, labels, 3);
  int64_t kept_in_first_three = 0;
  layer.ForEachKeptAssignment([&](int64_t row, int, float) { kept_in_first_three += row < 12; });
  double total_three = 0;
  for (int e = 0; e < 4; ++e) {
    double sum = 0;
    for (int c = 0; c < 3; ++c) sum += all.matrix(0).count(e, c);
    EXPECT_EQ(sum, layer.metrics().tokens_per_expert[e]) << "expert " << e;
    for (int c = 0; c < 3; ++c) total_three += three.matrix(0).count(e, c);
  }
  EXPECT_EQ(total_three, kept_in_first_three);
  EXPECT_EQ(all.matrix(0).class_images, (std::vector<double>{1, 1, 2}));
  EXPECT_EQ(all.matrix(0).rows_per_image, 4);
}

}  // namespace
}  // namespace moe
