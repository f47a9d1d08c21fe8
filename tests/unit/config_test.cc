// Config loading and validation: the shipped configs are valid; each bad value is reported with
// its field name and value; the hash that ranks compare changes with any field.
#include <gtest/gtest.h>

#include <fstream>

#include "launcher/config.h"

namespace moe {
namespace {

const std::string kSrc = MOE_EP_SOURCE_DIR;

proto::TrainConfig LoadOk(const std::string& path, const std::string& overrides = "") {
  proto::TrainConfig c;
  std::string err;
  EXPECT_TRUE(LoadTrainConfig(path, overrides, &c, &err)) << err;
  return c;
}

std::string JoinedErrors(const proto::TrainConfig& c, int world) {
  std::string s;
  for (const auto& e : ValidateTrainConfig(c, world)) s += e + "\n";
  return s;
}

TEST(Config, ShippedConfigsAreValidOnFourRanks) {
  for (const char* name : {"vmoe_tiny.pbtxt", "vit_tiny.pbtxt"}) {
    const auto c = LoadOk(kSrc + "/launcher/configs/" + name);
    EXPECT_EQ(JoinedErrors(c, 4), "") << name;
  }
  EXPECT_TRUE(LoadOk(kSrc + "/launcher/configs/vmoe_tiny.pbtxt").model().use_moe());
  EXPECT_FALSE(LoadOk(kSrc + "/launcher/configs/vit_tiny.pbtxt").model().use_moe());
}

TEST(Config, OverridesMergeOverTheFile) {
  const auto c = LoadOk(kSrc + "/launcher/configs/vmoe_tiny.pbtxt",
                        "steps: 7 model { moe { top_k: 1 } }");
  EXPECT_EQ(c.steps(), 7);
  EXPECT_EQ(c.model().moe().top_k(), 1);
  EXPECT_EQ(c.model().moe().num_experts(), 8);  // untouched fields survive the merge
}

TEST(Config, UnknownFieldIsNamedWithItsLine) {
  const std::string path = ::testing::TempDir() + "/bad.pbtxt";
  std::ofstream(path) << "steps: 3\nmodel { moe { num_expert: 8 } }\n";
  proto::TrainConfig c;
  std::string err;
  EXPECT_FALSE(LoadTrainConfig(path, "", &c, &err));
  EXPECT_NE(err.find("num_expert"), std::string::npos) << err;
  EXPECT_NE(err.find("bad.pbtxt:2"), std::string::npos) << err;
}

TEST(Config, MissingFileIsNamed) {
  proto::TrainConfig c;
  std::string err;
  EXPECT_FALSE(LoadTrainConfig("/nonexistent/x.pbtxt", "", &c, &err));
  EXPECT_NE(err.find("/nonexistent/x.pbtxt"), std::string::npos) << err;
}

struct BadCase {
  const char* overrides;
  int world;
  const char* expected;
};

class ConfigBadValue : public ::testing::TestWithParam<BadCase> {};

TEST_P(ConfigBadValue, NamesFieldAndValue) {
  const BadCase b = GetParam();
  const auto c = LoadOk(kSrc + "/launcher/configs/vmoe_tiny.pbtxt", b.overrides);
  const std::string errs = JoinedErrors(c, b.world);
  EXPECT_NE(errs.find(b.expected), std::string::npos) << "got: " << errs;
}

INSTANTIATE_TEST_SUITE_P(
    Fields, ConfigBadValue,
    ::testing::Values(
        BadCase{"model { moe { num_experts: 6 } }", 4, "model.moe.num_experts=6"},
        BadCase{"model { moe { top_k: 9 } }", 4, "model.moe.top_k=9"},
        BadCase{"model { moe { top_k: 0 } }", 4, "model.moe.top_k=0"},
        BadCase{"model { moe { capacity_factor_train: 0 } }", 4, "model.moe.capacity_factor_train=0"},
        BadCase{"model { moe { capacity_factor_eval: -1 } }", 4, "model.moe.capacity_factor_eval=-1"},
        BadCase{"parallel { ep_size: 3 }", 4, "parallel.ep_size=3"},
        BadCase{"parallel { ep_size: 0 }", 4, "parallel.ep_size=0"},
        BadCase{"model { moe { group_size_images: 5 } }", 4, "model.moe.group_size_images=5"},
        BadCase{"model { patch_size: 5 }", 4, "model.patch_size=5"},
        BadCase{"model { num_heads: 3 }", 4, "model.num_heads=3"},
        BadCase{"data { batch_per_rank: 0 }", 4, "data.batch_per_rank=0"},
        BadCase{"device: 'tpu'", 4, "device=\"tpu\""},
        BadCase{"optimizer { learning_rate: -1 }", 4, "optimizer.learning_rate=-1"},
        BadCase{"steps: 0", 4, "steps=0"}));

TEST(Config, HashSeesEveryField) {
  const auto a = LoadOk(kSrc + "/launcher/configs/vmoe_tiny.pbtxt");
  auto b = a;
  EXPECT_EQ(ConfigHash(a), ConfigHash(b));
  b.set_seed(a.seed() + 1);
  EXPECT_NE(ConfigHash(a), ConfigHash(b));
  b = a;
  b.mutable_model()->mutable_moe()->set_capacity_factor_train(1.06f);
  EXPECT_NE(ConfigHash(a), ConfigHash(b));
}

}  // namespace
}  // namespace moe
