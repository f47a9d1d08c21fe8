// Stochastic depth (models/layers/drop_path.h): identity at evaluation; in training each image's
// branch output is dropped or kept by the counter-RNG mask and kept ones scaled by 1 / (1 - p);
// backward against finite differences with the mask fixed; the nets build DropPath layers only
// when the rate is above 0 and leave evaluation unchanged.
#include "models/layers/drop_path.h"

#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "comm/self_communicator.h"
#include "models/layers/linear.h"
#include "models/layers/residual.h"
#include "models/nets/mlp_mixer.h"
#include "models/nets/vision_transformer.h"
#include "tests/unit/grad_check.h"

namespace moe {
namespace {

using testing::Dot;
using testing::ExpectGradientsMatch;
using testing::RandomTensor;

DropPathContext Training(int64_t step, int64_t first_image, int64_t images) {
  DropPathContext c;
  c.training = true;
  c.step_key = DropPathStepKey(7, step);
  c.first_image = first_image;
  c.batch_images = images;
  return c;
}

TEST(DropPath, IdentityAtEvaluation) {
  DropPathContext ctx;  // training = false
  ctx.batch_images = 4;
  DropPath dp(0.5f, 0, &ctx);
  const Tensor x = RandomTensor({4 * 3, 5}, 1);
  EXPECT_EQ(dp.Forward(x).ToVector(), x.ToVector());
  EXPECT_TRUE(dp.image_scales().empty());
  const Tensor dy = RandomTensor({4 * 3, 5}, 2);
  EXPECT_EQ(dp.Backward(dy).ToVector(), dy.ToVector());
}

TEST(DropPath, TrainingDropsWholeImagesByTheMaskAndScalesTheKept) {
  const float p = 0.25f;
  const int64_t images = 6, rows_per_image = 3, dim = 4;
  DropPathContext ctx = Training(3, 10, images);
  DropPath dp(p, 2, &ctx);
  const Tensor x = RandomTensor({images * rows_per_image, dim}, 3);
  const Tensor y = dp.Forward(x);
  const int64_t per_image = rows_per_image * dim;
  for (int64_t b = 0; b < images; ++b) {
    const bool keep = DropPathKeeps(ctx.step_key, 2, 10 + b, p);
    for (int64_t i = b * per_image; i < (b + 1) * per_image; ++i)
      EXPECT_EQ(y.at(i), keep ? x.at(i) * (1.f / (1.f - p)) : 0.f) << "image " << b;
  }
  // Over many images the dropped fraction is p: Binomial(20000, 0.25), std 61; 5 std.
  int dropped = 0;
  for (int64_t i = 0; i < 20000; ++i) dropped += !DropPathKeeps(ctx.step_key, 2, i, p);
  EXPECT_NEAR(dropped, 5000, 310);
  // The mask is keyed on the residual and the step, not only the image.
  int residual_differs = 0, step_differs = 0;
  for (int64_t i = 0; i < 200; ++i) {
    residual_differs +=
        DropPathKeeps(ctx.step_key, 2, i, p) != DropPathKeeps(ctx.step_key, 3, i, p);
    step_differs +=
        DropPathKeeps(ctx.step_key, 2, i, p) != DropPathKeeps(DropPathStepKey(7, 4), 2, i, p);
  }
  EXPECT_GT(residual_differs, 0);
  EXPECT_GT(step_differs, 0);
}

TEST(DropPath, SameMaskOnAnyRankLayout) {
  // 8 images on one rank vs 4 ranks of 2: each image gets the same scale.
  DropPathContext whole_ctx = Training(5, 0, 8);
  DropPath whole(0.5f, 1, &whole_ctx);
  whole.Forward(Tensor::Zeros({8 * 2, 3}));
  for (int rank = 0; rank < 4; ++rank) {
    DropPathContext ctx = Training(5, rank * 2, 2);
    DropPath part(0.5f, 1, &ctx);
    part.Forward(Tensor::Zeros({2 * 2, 3}));
    for (int b = 0; b < 2; ++b)
      EXPECT_EQ(part.image_scales()[b], whole.image_scales()[rank * 2 + b]) << rank << " " << b;
  }
}

TEST(DropPath, ResidualBackwardMatchesFiniteDifferencesWithAFixedMask) {
  // y = x + DropPath(Linear(x)) over 6 images of 2 rows; step 3's mask drops some and keeps some.
  const int64_t images = 6, rows = images * 2, dim = 5;
  DropPathContext ctx = Training(3, 0, images);
  std::vector<std::unique_ptr<Layer>> branch;
  branch.push_back(std::make_unique<Linear>("lin", dim, dim, 11));
  branch.push_back(std::make_unique<DropPath>(0.4f, 0, &ctx));
  auto* dp = static_cast<DropPath*>(branch.back().get());
  Residual res(std::move(branch));
  Tensor x = RandomTensor({rows, dim}, 12);
  const Tensor probe = RandomTensor({rows, dim}, 13);
  auto objective = [&] { return Dot(res.Forward(x), probe); };
  objective();
  int kept = 0;
  for (float s : dp->image_scales()) kept += s > 0;
  ASSERT_GT(kept, 0) << "the test needs a kept image";
  ASSERT_LT(kept, images) << "the test needs a dropped image";
  for (Parameter* p : res.Parameters()) p->grad.Zero();
  const Tensor dx = res.Backward(probe);
  ExpectGradientsMatch("drop-path residual dx", &x, dx, objective);
  for (Parameter* p : res.Parameters()) {
    const Tensor g = p->grad.Clone();
    ExpectGradientsMatch("drop-path residual " + p->name, &p->value, g, objective);
  }
}

TEST(DropPath, LinearRateOverBlocks) {
  EXPECT_FLOAT_EQ(DropPathRateOfBlock(0.3f, 0, 4), 0.f);
  EXPECT_FLOAT_EQ(DropPathRateOfBlock(0.3f, 1, 4), 0.1f);
  EXPECT_FLOAT_EQ(DropPathRateOfBlock(0.3f, 2, 4), 0.2f);
  EXPECT_FLOAT_EQ(DropPathRateOfBlock(0.3f, 3, 4), 0.3f);
  EXPECT_FLOAT_EQ(DropPathRateOfBlock(0.3f, 0, 1), 0.3f);
}

proto::ModelConfig SmallModel(const std::string& family, float rate) {
  proto::ModelConfig m;
  m.set_family(family);
  m.set_hidden_dim(16);
  m.set_mlp_dim(32);
  m.set_num_heads(2);
  m.set_num_layers(3);
  m.mutable_mixer()->set_token_mlp_dim(8);
  m.mutable_mixer()->set_channel_mlp_dim(16);
  m.set_drop_path_rate(rate);
  return m;
}

// With the rate on, evaluation gives the logits of the same net without it (same parameters),
// and training changes them.
template <typename NetT>
void ExpectEvaluationUnchanged(const std::string& family) {
  SelfCommunicator comm;
  NetT plain(SmallModel(family, 0.f), &comm, 5), dropping(SmallModel(family, 0.6f), &comm, 5);
  ASSERT_EQ(plain.Parameters().size(), dropping.Parameters().size());
  const Tensor images = RandomTensor({4, 784}, 6);
  DropPathContext eval;
  eval.batch_images = 4;
  plain.SetDropPathContext(eval);
  dropping.SetDropPathContext(eval);
  EXPECT_EQ(plain.Forward(images).ToVector(), dropping.Forward(images).ToVector()) << family;
  dropping.SetDropPathContext(Training(0, 0, 4));
  EXPECT_NE(plain.Forward(images).ToVector(), dropping.Forward(images).ToVector()) << family;
}

TEST(DropPath, VitAndMixerEvaluateAsWithoutIt) {
  ExpectEvaluationUnchanged<VisionTransformer>("vit");
  ExpectEvaluationUnchanged<MlpMixer>("mixer");
}

}  // namespace
}  // namespace moe
