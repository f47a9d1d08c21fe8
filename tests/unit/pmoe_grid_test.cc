// Family "pmoe" with a finer patch grid (models/nets/patch_cnn.h): overlapping patches
// (pmoe.patch_stride) and per-region pooling (pmoe.pool_grid). Patchify's layout and region
// order, its backward (overlaps SUM) against finite differences, the whole net's gradients with
// both options on, which head block a region reaches, the FLOPs count, the config checks and the
// shipped full configs. tests/unit/pmoe_test.cc covers the default geometry;
// tests/mpi/ep_invariance_pmoe_test.cc covers the ranks.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "comm/self_communicator.h"
#include "launcher/config.h"
#include "models/layers/patchify.h"
#include "models/nets/families.h"
#include "models/nets/patch_cnn.h"
#include "tests/unit/grad_check.h"

namespace moe {
namespace {

using testing::ExpectGradientsMatch;
using testing::GradCheckOptions;
using testing::RandomTensor;

PatchifyOptions Options(int64_t stride, int64_t region_grid) {
  PatchifyOptions o;
  o.stride = stride;
  o.region_grid = region_grid;
  return o;
}

// Pixel value = its CHW index, so a patch's entries name the pixels it read.
Tensor Indexed(int64_t batch, int64_t pixels) {
  Tensor x({batch, pixels});
  for (int64_t i = 0; i < x.numel(); ++i) x.at(i) = static_cast<float>(i % pixels);
  return x;
}

// ---------------------------------------------------------------------------------------------
// Patchify

TEST(PatchifyStride, OverlappingPatchesAreAStridedConvsInput) {
  // Two channels of 5x5, p = 3, s = 1: g = 3, n = 9 patches of 18.
  Patchify layer(5, 2, 3, Options(1, 1));
  EXPECT_EQ(layer.grid(), 3);
  EXPECT_EQ(layer.tokens_per_image(), 9);
  EXPECT_EQ(layer.patch_dim(), 18);
  EXPECT_TRUE(layer.host_only());
  const Tensor y = layer.Forward(Indexed(2, 50));
  ASSERT_EQ(y.dim(0), 18);
  // Token 5 = (py 1, px 2) of image 1: rows 1-3, columns 2-4, channel-major.
  const std::vector<float> want = {7,  8,  9,  12, 13, 14, 17, 18, 19,
                                   32, 33, 34, 37, 38, 39, 42, 43, 44};
  for (int e = 0; e < 18; ++e) EXPECT_EQ(y.at((9 + 5) * 18 + e), want[e]) << e;
}

TEST(PatchifyStride, DefaultGeometryIsTheBackendsPermutation) {
  // stride = p given explicitly is the default geometry: Backend::Patchify, bit for bit.
  Patchify plain(28, 1, 7), explicit_stride(28, 1, 7, Options(7, 1));
  EXPECT_FALSE(plain.host_only());
  EXPECT_FALSE(explicit_stride.host_only());
  // The run table with region_grid 1 reproduces the backend's row-major order: compare the
  // table path (a G = 1 grid forced through it by an overlapping stride of 1 on 2x2 patches of
  // a 4x4 image, where tokens 0, 2, 6, 8 are the non-overlapping ones) with the backend.
  Patchify dense(4, 1, 2), overlapping(4, 1, 2, Options(1, 1));
  const Tensor x = RandomTensor({2, 16}, 3);
  const Tensor a = dense.Forward(x), b = overlapping.Forward(x);
  const int64_t same[4] = {0, 2, 6, 8};
  for (int64_t img = 0; img < 2; ++img)
    for (int t = 0; t < 4; ++t)
      for (int e = 0; e < 4; ++e)
        EXPECT_EQ(a.at((img * 4 + t) * 4 + e), b.at((img * 9 + same[t]) * 4 + e));
}

TEST(PatchifyStride, RegionOrderMakesEachRegionsTokensContiguous) {
  // 8x8, p = s = 2: g = 4; G = 2 cuts it into 4 regions of 2x2 patches.
  Patchify rows(8, 1, 2), regions(8, 1, 2, Options(0, 2));
  EXPECT_TRUE(regions.host_only());
  const Tensor x = RandomTensor({2, 64}, 5);
  const Tensor a = rows.Forward(x), b = regions.Forward(x);
  for (int64_t img = 0; img < 2; ++img)
    for (int64_t t = 0; t < 16; ++t) {
      const int64_t region = t / 4, local = t % 4;
      const int64_t py = (region / 2) * 2 + local / 2, px = (region % 2) * 2 + local % 2;
      for (int e = 0; e < 4; ++e)
        ASSERT_EQ(b.at((img * 16 + t) * 4 + e), a.at((img * 16 + py * 4 + px) * 4 + e))
            << "image " << img << " token " << t;
    }
}

TEST(PatchifyStride, BackwardSumsOverlapsAndMatchesFiniteDifferences) {
  // 7x7, p = 3, s = 2, G = 3: g = 3, each region one patch; pixels on rows/columns 2 and 4
  // lie in two patches per axis.
  Patchify layer(7, 2, 3, Options(2, 3));
  Tensor x = RandomTensor({3, 98}, 11);
  const Tensor probe = RandomTensor({3 * 9, 18}, 12);
  layer.Forward(x);
  const Tensor dx = layer.Backward(probe).Clone();
  // The objective is linear in x, so central differences are exact up to rounding: a tight
  // tolerance (float sums of at most 4 terms of size ~1 against double-accumulated quotients).
  GradCheckOptions opt;
  opt.rel_tol = 1e-3;
  opt.max_checks_per_tensor = 1000;
  ExpectGradientsMatch("patchify.dx", &x, dx,
                       [&]() { return testing::Dot(layer.Forward(x), probe); }, opt);
  // Backward of all ones counts the patches that hold each pixel: (1 or 2) per axis.
  Tensor ones({9, 18});
  ones.Fill(1.f);
  layer.Forward(RandomTensor({1, 98}, 13));
  const Tensor count = layer.Backward(ones);
  auto per_axis = [](int v) { return (v == 2 || v == 4) ? 2.f : 1.f; };
  for (int c = 0; c < 2; ++c)
    for (int i = 0; i < 7; ++i)
      for (int j = 0; j < 7; ++j)
        EXPECT_EQ(count.at(c * 49 + i * 7 + j), per_axis(i) * per_axis(j)) << i << "," << j;
}

// ---------------------------------------------------------------------------------------------
// The net

proto::ModelConfig GridModel(bool use_moe, int image, int patch, int stride, int pool_grid) {
  proto::ModelConfig m;
  m.set_family("pmoe");
  m.set_image_size(image);
  m.set_channels(1);
  m.set_patch_size(patch);
  m.set_hidden_dim(6);
  m.set_num_classes(3);
  m.set_use_moe(use_moe);
  auto* moe = m.mutable_moe();
  moe->set_num_experts(2);
  moe->set_routing(proto::MoeConfig::PATCH_TOP_L);
  moe->set_patch_top_l(5);
  moe->set_router_noise_scale(0);
  moe->set_importance_loss_weight(0);
  moe->set_load_loss_weight(0);
  moe->set_group_size_images(2);
  m.mutable_pmoe()->set_conv_channels(8);
  m.mutable_pmoe()->set_expert_activation(proto::PmoeConfig::GELU);  // smooth: see pmoe_test
  m.mutable_pmoe()->set_patch_stride(stride);
  m.mutable_pmoe()->set_pool_grid(pool_grid);
  return m;
}

MoeStepContext Context(bool training, int64_t step, int64_t groups) {
  MoeStepContext ctx;
  ctx.training = training;
  ctx.step = step;
  ctx.num_global_groups = groups;
  return ctx;
}

Parameter* Find(const std::vector<Parameter*>& ps, const std::string& name) {
  for (Parameter* p : ps)
    if (p->name == name) return p;
  return nullptr;
}

Tensor Images(int64_t batch, int64_t pixels, uint64_t key) {
  Tensor x = RandomTensor({batch, pixels}, key);
  for (int64_t i = 0; i < x.numel(); ++i) x.at(i) = 0.5f + 0.25f * x.at(i);
  return x;
}

class PmoeGridNetGradTest : public ::testing::TestWithParam<bool> {};

// 10x10 images, p = 4, s = 2: g = 4, n = 16 overlapping patches, G = 2 regions of 2x2 patches,
// head [4 * D, C]. Every parameter's gradient against central differences (same step and
// tolerances as pmoe_test's whole-net check, whose derivation holds here: the same layers).
TEST_P(PmoeGridNetGradTest, MatchesFiniteDifferences) {
  const bool use_moe = GetParam();
  SelfCommunicator comm;
  PatchCnn net(GridModel(use_moe, 10, 4, 2, 2), &comm, 5);
  ASSERT_EQ(net.tokens_per_image(), 16);
  if (use_moe) {  // well-separated scores: no step of h reorders an expert's top-l
    Parameter* r = Find(net.Parameters(), "moe.router.w");
    for (int64_t i = 0; i < r->value.numel(); ++i) r->value.at(i) *= 40.f;
  }
  EXPECT_EQ(Find(net.Parameters(), "head.w")->value.dim(0), 4 * 6);
  net.SetMoeContext(Context(true, 3, 2));
  Tensor x = Images(4, 100, 7);
  const Tensor probe = RandomTensor({4, 3}, 8);
  auto objective = [&]() { return testing::Dot(net.Forward(x), probe); };
  const std::vector<Parameter*> params = net.Parameters();
  for (Parameter* p : params) p->grad.Zero();
  net.Forward(x);
  net.Backward(probe);
  GradCheckOptions opt;
  opt.step = 2e-3f;
  opt.abs_floor = 5e-3;
  for (Parameter* p : params) {
    const Tensor g = p->grad.Clone();
    ExpectGradientsMatch(p->name + "#" + std::to_string(p->global_expert_id), &p->value, g,
                         objective, opt);
  }
}

INSTANTIATE_TEST_SUITE_P(Pmoe, PmoeGridNetGradTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return std::string(info.param ? "pmoe" : "dense_cnn");
                         });

// Region r's mean reaches the head through rows r*D .. (r+1)*D - 1 only: with every other block
// of head.w zeroed, a nudge to pixels that no patch of region r reads leaves the logits exactly
// as they were, and a nudge inside region r moves them. 12x12, p = s = 3 (g = 4), G = 2: region
// (ry, rx) reads the 6x6 pixel block at (6 ry, 6 rx).
TEST(PmoeGridNet, EachRegionReachesItsOwnHeadBlock) {
  SelfCommunicator comm;
  PatchCnn net(GridModel(false, 12, 3, 3, 2), &comm, 9);
  net.SetMoeContext(Context(false, 0, 1));
  Parameter* head = Find(net.Parameters(), "head.w");
  const int D = 6, C = 3;
  const Tensor x = Images(1, 144, 4);
  for (int region = 0; region < 4; ++region) {
    Tensor w = head->value.Clone();
    for (int row = 0; row < 4 * D; ++row)
      for (int c = 0; c < C; ++c)
        if (row / D != region) head->value.at(row * C + c) = 0.f;
    const Tensor base = net.Forward(x).Clone();
    for (int other = 0; other < 4; ++other) {
      Tensor z = x.Clone();
      const int y0 = 6 * (other / 2), x0 = 6 * (other % 2);
      for (int i = 0; i < 6; ++i)
        for (int j = 0; j < 6; ++j) z.at((y0 + i) * 12 + x0 + j) += 0.5f;
      const Tensor out = net.Forward(z);
      double moved = 0;
      for (int c = 0; c < C; ++c) moved += std::abs(out.at(c) - base.at(c));
      if (other == region) {
        EXPECT_GT(moved, 0) << "region " << region << " did not reach its head block";
      } else {
        EXPECT_EQ(moved, 0) << "region " << other << " reached region " << region << "'s block";
      }
    }
    head->value.CopyFrom(w);
  }
}

TEST(PmoeGridNet, FlopsCountNPatchesAndGSquaredHeadBlocks) {
  SelfCommunicator comm;
  // 28x28, p = 7, s = 3: g = 8, n = 64; G = 4.
  proto::ModelConfig dense_model = GridModel(false, 28, 7, 3, 4);
  proto::ModelConfig moe_model = GridModel(true, 28, 7, 3, 4);
  PatchCnn dense(dense_model, &comm, 1), pmoe(moe_model, &comm, 1);
  const double n = 64, P = 49, D = 6, C = 3, m = 8, E = 2, l = 5, h = m / E, regions = 16;
  EXPECT_DOUBLE_EQ(dense.FlopsPerImage(), 2 * (n * P * D + n * 2 * D * m + regions * D * C));
  EXPECT_DOUBLE_EQ(pmoe.FlopsPerImage(),
                   2 * (n * P * D + n * D * E + E * l * 2 * D * h + regions * D * C));
}

// ---------------------------------------------------------------------------------------------
// Configs

proto::TrainConfig LoadConfig(const std::string& name) {
  proto::TrainConfig c;
  std::string err;
  EXPECT_TRUE(LoadTrainConfig(std::string(MOE_EP_SOURCE_DIR) + "/launcher/configs/" + name, "",
                              &c, &err))
      << err;
  return c;
}

bool HasError(const std::vector<std::string>& errs, const std::string& field) {
  const std::string want = "config error: " + field;
  return std::any_of(errs.begin(), errs.end(),
                     [&](const std::string& e) { return e.rfind(want, 0) == 0; });
}

TEST(PmoeGridConfig, ValidatorNamesEachBadField) {
  const proto::TrainConfig good = LoadConfig("pmoe_tiny.pbtxt");  // 28x28, p = 7
  struct Bad {
    int stride, pool_grid;
    const char* device;
    const char* field;
  };
  const std::vector<Bad> cases = {
      {2, 1, "cpu", "model.pmoe.patch_stride=2"},    // 21 % 2 != 0: the last patch falls short
      {8, 1, "cpu", "model.pmoe.patch_stride=8"},    // larger than p: skips pixels
      {-1, 1, "cpu", "model.pmoe.patch_stride=-1"},
      {3, 3, "cpu", "model.pmoe.pool_grid=3"},       // g = 8
      {0, 0, "cpu", "model.pmoe.pool_grid=0"},
      {0, 3, "cpu", "model.pmoe.pool_grid=3"},       // g = 4
      {3, 1, "cuda", "model.pmoe.patch_stride=3"},   // host path only
      {0, 2, "cuda", "model.pmoe.pool_grid=2"},
  };
  for (const Bad& b : cases) {
    proto::TrainConfig c = good;
    c.mutable_model()->mutable_pmoe()->set_patch_stride(b.stride);
    c.mutable_model()->mutable_pmoe()->set_pool_grid(b.pool_grid);
    c.set_device(b.device);
    for (bool use_moe : {true, false}) {
      c.mutable_model()->set_use_moe(use_moe);
      std::vector<std::string> errs;
      ValidatePatchCnnConfig(c, &errs);
      EXPECT_TRUE(HasError(errs, b.field))
          << "no \"" << b.field << "...\" among " << errs.size() << " errors"
          << (errs.empty() ? "" : ": " + errs[0]);
    }
  }
  // Accepted: every stride dividing 21 up to p, explicit p on CUDA, and G dividing g = 8.
  for (const auto& [stride, pool_grid, device] :
       std::vector<std::tuple<int, int, std::string>>{
           {1, 2, "cpu"}, {3, 4, "cpu"}, {3, 8, "cpu"}, {7, 1, "cuda"}, {0, 1, "cuda"}}) {
    proto::TrainConfig c = good;
    c.mutable_model()->mutable_pmoe()->set_patch_stride(stride);
    c.mutable_model()->mutable_pmoe()->set_pool_grid(pool_grid);
    c.set_device(device);
    std::vector<std::string> errs;
    ValidatePatchCnnConfig(c, &errs);
    EXPECT_TRUE(errs.empty()) << stride << "/" << pool_grid << ": " << errs[0];
  }
  // l is checked against the finer grid's n = 64.
  proto::TrainConfig c = good;
  c.mutable_model()->mutable_pmoe()->set_patch_stride(3);
  c.mutable_model()->mutable_moe()->set_patch_top_l(40);
  std::vector<std::string> errs;
  ValidatePatchCnnConfig(c, &errs);
  EXPECT_TRUE(errs.empty()) << errs[0];
  c.mutable_model()->mutable_moe()->set_patch_top_l(64);
  errs.clear();
  ValidatePatchCnnConfig(c, &errs);
  EXPECT_TRUE(HasError(errs, "model.moe.patch_top_l=64"));
}

// The full recipes: both validate, and pMoE runs at most half the dense CNN's FLOPs per image
// with l <= n / 2 (the claim the pair is built to test).
TEST(PmoeGridConfig, FullConfigsValidateAndPmoeHalvesTheFlops) {
  const proto::TrainConfig dense_cfg = LoadConfig("cnn_full.pbtxt");
  const proto::TrainConfig moe_cfg = LoadConfig("pmoe_full.pbtxt");
  for (const proto::TrainConfig* c : {&dense_cfg, &moe_cfg}) {
    const std::vector<std::string> errs = ValidateTrainConfig(*c, 4);
    EXPECT_TRUE(errs.empty()) << c->model().use_moe() << ": " << (errs.empty() ? "" : errs[0]);
  }
  EXPECT_FALSE(dense_cfg.model().use_moe());
  EXPECT_TRUE(moe_cfg.model().use_moe());
  EXPECT_EQ(moe_cfg.parallel().ep_size(), 0);
  EXPECT_LE(2 * moe_cfg.model().moe().patch_top_l(), PmoePatchesPerImage(moe_cfg.model()));
  SelfCommunicator comm;
  PatchCnn dense(dense_cfg.model(), &comm, 1), pmoe(moe_cfg.model(), &comm, 1);
  EXPECT_LE(pmoe.FlopsPerImage(), 0.5 * dense.FlopsPerImage());
}

}  // namespace
}  // namespace moe
