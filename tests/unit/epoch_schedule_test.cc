// The schedule in epochs (launcher/epoch_schedule.h) and the recipe's config checks: steps from
// epochs, the epoch that each step closes, the best per-epoch accuracy, and every bad value or
// conflicting pair refused with its field.
#include "launcher/epoch_schedule.h"

#include <google/protobuf/text_format.h>
#include <gtest/gtest.h>

#include <string>

#include "launcher/config.h"

namespace moe {
namespace {

proto::TrainConfig Base(int batch_per_rank) {
  proto::TrainConfig c;
  c.mutable_data()->set_batch_per_rank(batch_per_rank);
  return c;
}

std::string Errors(const proto::TrainConfig& c, int world) {
  std::string s;
  for (const auto& e : ValidateTrainConfig(c, world)) s += e + "\n";
  return s;
}

TEST(EpochSchedule, ThreeEpochsOfSixtyThousandAtBatch32On4Ranks) {
  proto::TrainConfig c = Base(32);
  c.mutable_recipe()->set_epochs(3);
  EXPECT_EQ(ResolveEpochSchedule(&c, 4), "");
  EXPECT_EQ(c.steps(), 1407);  // ceil(180000 / 128) = ceil(1406.25)
  EXPECT_EQ(StepsForEpochs(3, 60000, 128), 1407);
  EXPECT_EQ(StepsForEpochs(1, 60000, 100), 600);  // exact: no extra step
  EXPECT_EQ(Errors(c, 4), "");
}

TEST(EpochSchedule, WarmupInEpochsAndTheImagesLimit) {
  proto::TrainConfig c = Base(32);
  c.mutable_data()->set_train_images_limit(1000);
  c.mutable_recipe()->set_epochs(2);
  c.mutable_recipe()->set_warmup_epochs(0.5f);
  EXPECT_EQ(ResolveEpochSchedule(&c, 2), "");
  EXPECT_EQ(EpochImages(c), 1000);
  EXPECT_EQ(c.steps(), 32);                         // ceil(2000 / 64) = 31.25 -> 32
  EXPECT_EQ(c.optimizer().warmup_steps(), 8);       // ceil(500 / 64) = 7.8 -> 8
}

TEST(EpochSchedule, WithoutEpochsNothingChanges) {
  proto::TrainConfig c = Base(32);
  c.set_steps(123);
  const std::string before = c.SerializeAsString();
  EXPECT_EQ(ResolveEpochSchedule(&c, 4), "");
  EXPECT_EQ(c.SerializeAsString(), before);
}

TEST(EpochSchedule, StepsAndEpochsTogetherAreRefusedNamingBoth) {
  proto::TrainConfig c = Base(32);
  c.set_steps(500);
  c.mutable_recipe()->set_epochs(3);
  const std::string e = ResolveEpochSchedule(&c, 4);
  EXPECT_NE(e.find("config error: steps=500 and recipe.epochs=3"), std::string::npos) << e;
  // steps: 0 reads as unset (an override switching a config to epochs).
  c.set_steps(0);
  EXPECT_EQ(ResolveEpochSchedule(&c, 4), "");
  EXPECT_EQ(c.steps(), 1407);
  proto::TrainConfig w = Base(32);
  w.mutable_optimizer()->set_warmup_steps(50);
  w.mutable_recipe()->set_warmup_epochs(1);
  const std::string we = ResolveEpochSchedule(&w, 4);
  EXPECT_NE(we.find("optimizer.warmup_steps=50 and recipe.warmup_epochs=1"), std::string::npos)
      << we;
}

TEST(EpochSchedule, EachEpochEndsAtTheStepHoldingItsLastImage) {
  // 1000 images, global batch 300: epochs end after steps 4 (1200 >= 1000), 7 (2100 >= 2000),
  // 10 (3000 >= 3000).
  EpochEvaluations e(1000, 300);
  std::vector<int64_t> ends;
  for (int64_t done = 1; done <= 10; ++done)
    if (e.EpochEndingAt(done) > 0) ends.push_back(done);
  EXPECT_EQ(ends, (std::vector<int64_t>{4, 7, 10}));
  EXPECT_EQ(e.EpochEndingAt(7), 2);
  EXPECT_EQ(e.EpochEndingAt(10), 3);
  EXPECT_EQ(e.EpochEndingAt(0), 0);
  // 60000 images at 128: epoch 3 ends at step 1407, the schedule's last.
  EXPECT_EQ(EpochEvaluations(60000, 128).EpochEndingAt(1407), 3);
  EXPECT_EQ(EpochEvaluations(60000, 128).EpochEndingAt(1406), 0);
}

TEST(EpochSchedule, BestAccuracyKeepsTheFirstEpochThatReachedIt) {
  EpochEvaluations e(100, 10);
  EXPECT_FALSE(e.any());
  e.Record(1, 0.80);
  e.Record(2, 0.85);
  e.Record(3, 0.85);
  e.Record(4, 0.83);
  EXPECT_TRUE(e.any());
  EXPECT_DOUBLE_EQ(e.best_accuracy(), 0.85);
  EXPECT_EQ(e.best_epoch(), 2);
}

TEST(RecipeConfig, DefaultsAreOffAndValid) {
  proto::TrainConfig c;
  EXPECT_EQ(c.recipe().crop_padding(), 0);
  EXPECT_FALSE(c.recipe().horizontal_flip());
  EXPECT_EQ(c.recipe().label_smoothing(), 0.f);
  EXPECT_EQ(c.recipe().epochs(), 0);
  EXPECT_FALSE(c.recipe().eval_every_epoch());
  EXPECT_EQ(c.model().drop_path_rate(), 0.f);
  EXPECT_EQ(Errors(c, 4), "");
}

TEST(RecipeConfig, OutOfRangeValuesNameTheField) {
  struct Case {
    const char* text;  // merged over the defaults
    const char* field;
    const char* value;
  } cases[] = {
      {"recipe { crop_padding: 9 }", "recipe.crop_padding", "9"},
      {"recipe { crop_padding: -1 }", "recipe.crop_padding", "-1"},
      {"recipe { label_smoothing: 1 }", "recipe.label_smoothing", "1"},
      {"recipe { label_smoothing: -0.1 }", "recipe.label_smoothing", "-0.1"},
      {"recipe { label_smoothing: nan }", "recipe.label_smoothing", "nan"},
      {"recipe { epochs: -2 }", "recipe.epochs", "-2"},
      {"recipe { warmup_epochs: -1 }", "recipe.warmup_epochs", "-1"},
      {"recipe { warmup_epochs: inf }", "recipe.warmup_epochs", "inf"},
      {"model { drop_path_rate: 1 }", "model.drop_path_rate", "1"},
      {"model { drop_path_rate: -0.5 }", "model.drop_path_rate", "-0.5"},
      {"data { train_images_limit: -5 }", "data.train_images_limit", "-5"},
  };
  for (const Case& k : cases) {
    proto::TrainConfig c;
    ASSERT_TRUE(google::protobuf::TextFormat::MergeFromString(k.text, &c)) << k.text;
    const std::string e = Errors(c, 4);
    EXPECT_NE(e.find(std::string("config error: ") + k.field + "=" + k.value + ":"),
              std::string::npos)
        << k.field << " " << k.value << ": " << e;
  }
}

TEST(RecipeConfig, DropPathOnlyWhereBuiltOnEitherDevice) {
  proto::TrainConfig c;
  c.mutable_model()->set_drop_path_rate(0.1f);
  EXPECT_EQ(Errors(c, 4), "");  // "vit"
  c.mutable_model()->set_family("pmoe");
  EXPECT_NE(Errors(c, 4).find("config error: model.drop_path_rate=0.1: stochastic depth"),
            std::string::npos)
      << Errors(c, 4);
  proto::TrainConfig g;
  g.mutable_model()->set_drop_path_rate(0.1f);
  g.set_device("cuda");
  // Both devices scale on their own (Backend::ScaleSegments): no drop-path error on "cuda" (a
  // build without the CUDA path still refuses the device itself).
  EXPECT_EQ(Errors(g, 4).find("model.drop_path_rate"), std::string::npos) << Errors(g, 4);
  // Label smoothing runs on both devices: no error of its own on "cuda".
  proto::TrainConfig s;
  s.set_device("cuda");
  s.mutable_recipe()->set_label_smoothing(0.1f);
  EXPECT_EQ(Errors(s, 4).find("recipe.label_smoothing"), std::string::npos) << Errors(s, 4);
}

}  // namespace
}  // namespace moe
