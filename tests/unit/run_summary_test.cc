// The run summary: the line that launcher/family_results.sh parses and its JSON twin.
#include "launcher/run_summary.h"

#include <gtest/gtest.h>

namespace moe {
namespace {

RunSummary Example() {
  RunSummary s;
  s.family = "vit";
  s.model = "vmoe_tiny";
  s.dense_params = 1000;
  s.expert_params = 234;
  s.flops_per_image = 1.5e6;
  s.images_per_s = 812.34;
  s.train_wall_s = 47.26;
  s.steps = 300;
  s.global_batch = 128;
  s.world = 4;
  s.test_accuracy = 0.81234;
  return s;
}

TEST(RunSummary, LineHoldsEveryKeyOnce) {
  EXPECT_EQ(FormatSummaryLine(Example()),
            "summary: family=vit model=vmoe_tiny params=1234 dense_params=1000 "
            "expert_params=234 flops_per_image=1500000 images_per_s=812.3 train_wall_s=47.3 "
            "steps=300 global_batch=128 ranks=4 test_accuracy=0.8123");
}

TEST(RunSummary, JsonObject) {
  EXPECT_EQ(SummaryJson(Example()),
            "{\"summary\": {\"family\": \"vit\", \"model\": \"vmoe_tiny\", \"params\": 1234, "
            "\"dense_params\": 1000, \"expert_params\": 234, \"flops_per_image\": 1500000, "
            "\"images_per_s\": 812.34, \"train_wall_s\": 47.26, \"steps\": 300, "
            "\"global_batch\": 128, \"ranks\": 4, \"test_accuracy\": 0.81234}}");
}

TEST(RunSummary, ValuesCannotBreakTheLine) {
  RunSummary s = Example();
  s.model = "my \"model\" = x";
  s.family.clear();
  const std::string line = FormatSummaryLine(s);
  EXPECT_NE(line.find("family=- model=my__model____x "), std::string::npos) << line;
}

TEST(RunSummary, ModelNameFromConfigPath) {
  EXPECT_EQ(ModelNameFromConfigPath("launcher/configs/vmoe_tiny.pbtxt"), "vmoe_tiny");
  EXPECT_EQ(ModelNameFromConfigPath("/a.b/c"), "c");
  EXPECT_EQ(ModelNameFromConfigPath("vit_tiny.pbtxt"), "vit_tiny");
}

}  // namespace
}  // namespace moe
