// Training-image augmentation (launcher/augmentation.h): a crop at a known offset and a flip give
// exactly the expected pixels; the draws depend on (seed, step, global index) only, so a batch
// split over ranks is augmented as the whole batch; with both options off nothing changes.
#include "launcher/augmentation.h"

#include <gtest/gtest.h>

#include <set>
#include <vector>

namespace moe {
namespace {

// A 4x4 one-channel image whose pixel (y, x) holds 10 y + x + 1 (no pixel equals the background).
AugmentOptions Small(int padding, bool flip) {
  AugmentOptions o;
  o.crop_padding = padding;
  o.horizontal_flip = flip;
  o.image_size = 4;
  o.channels = 1;
  o.background = -7.f;
  return o;
}
std::vector<float> Ramp() {
  std::vector<float> v(16);
  for (int y = 0; y < 4; ++y)
    for (int x = 0; x < 4; ++x) v[y * 4 + x] = 10.f * y + x + 1;
  return v;
}

TEST(Augmentation, CropAtAKnownOffsetShiftsAndPadsWithBlack) {
  // Padding 2, window at (ox, oy) = (3, 1) of the 8x8 padded image: out(y, x) = in(y - 1, x + 1).
  const AugmentOptions o = Small(2, false);
  AugmentDraw d;
  d.offset_x = 3;
  d.offset_y = 1;
  const std::vector<float> in = Ramp();
  std::vector<float> out(16);
  AugmentImage(o, d, in.data(), out.data());
  const float B = -7.f;
  const std::vector<float> expected = {B,  B,  B,  B,   //
                                       2,  3,  4,  B,   //
                                       12, 13, 14, B,   //
                                       22, 23, 24, B};
  EXPECT_EQ(out, expected);
}

TEST(Augmentation, CentredCropIsTheIdentityAndFlipMirrorsColumns) {
  const AugmentOptions o = Small(2, true);
  AugmentDraw centre;
  centre.offset_x = centre.offset_y = 2;
  const std::vector<float> in = Ramp();
  std::vector<float> out(16);
  AugmentImage(o, centre, in.data(), out.data());
  EXPECT_EQ(out, in);
  centre.flip = true;
  AugmentImage(o, centre, in.data(), out.data());
  const std::vector<float> mirrored = {4,  3,  2,  1,  14, 13, 12, 11,
                                       24, 23, 22, 21, 34, 33, 32, 31};
  EXPECT_EQ(out, mirrored);
}

TEST(Augmentation, CropThenFlip) {
  // The flip mirrors the cropped window: out(y, x) = crop(y, 3 - x), crop(y, x) = in(y - 1, x + 1).
  const AugmentOptions o = Small(2, true);
  AugmentDraw d;
  d.offset_x = 3;
  d.offset_y = 1;
  d.flip = true;
  const std::vector<float> in = Ramp();
  std::vector<float> out(16);
  AugmentImage(o, d, in.data(), out.data());
  const float B = -7.f;
  const std::vector<float> expected = {B, B,  B,  B,  B, 4,  3,  2,
                                       B, 14, 13, 12, B, 24, 23, 22};
  EXPECT_EQ(out, expected);
}

TEST(Augmentation, DrawsCoverTheOffsetsAndFlipAboutHalf) {
  const AugmentOptions o = Small(2, true);
  std::set<int> xs, ys;
  int flips = 0;
  const int n = 4000;
  for (int i = 0; i < n; ++i) {
    const AugmentDraw d = DrawAugmentation(o, 5, 3, i);
    ASSERT_TRUE(d.offset_x >= 0 && d.offset_x <= 4 && d.offset_y >= 0 && d.offset_y <= 4);
    xs.insert(d.offset_x);
    ys.insert(d.offset_y);
    flips += d.flip;
  }
  EXPECT_EQ(xs.size(), 5u);
  EXPECT_EQ(ys.size(), 5u);
  // Binomial(4000, 0.5): std 31.6; 5 std either side.
  EXPECT_NEAR(flips, n / 2, 160);
}

TEST(Augmentation, SameDrawOnAnyRankLayout) {
  // 8 images of one global batch: on one rank (rows 0..7) and on 4 ranks of 2 rows each.
  AugmentOptions o = Small(2, true);
  Tensor whole({8, 16});
  for (int64_t i = 0; i < whole.numel(); ++i) whole.at(i) = static_cast<float>(i % 37);
  Tensor reference = whole.Clone();
  AugmentBatch(o, 11, 4, 0, &reference);
  for (int rank = 0; rank < 4; ++rank) {
    Tensor part({2, 16});
    for (int64_t i = 0; i < part.numel(); ++i) part.at(i) = whole.at(rank * 32 + i);
    AugmentBatch(o, 11, 4, rank * 2, &part);
    for (int64_t i = 0; i < part.numel(); ++i)
      ASSERT_EQ(part.at(i), reference.at(rank * 32 + i)) << "rank " << rank << " element " << i;
  }
  // Another step or seed draws differently (the key really holds them).
  bool step_differs = false, seed_differs = false;
  for (int i = 0; i < 64; ++i) {
    const AugmentDraw a = DrawAugmentation(o, 11, 4, i), b = DrawAugmentation(o, 11, 5, i),
                      c = DrawAugmentation(o, 12, 4, i);
    step_differs |= a.offset_x != b.offset_x || a.offset_y != b.offset_y || a.flip != b.flip;
    seed_differs |= a.offset_x != c.offset_x || a.offset_y != c.offset_y || a.flip != c.flip;
  }
  EXPECT_TRUE(step_differs);
  EXPECT_TRUE(seed_differs);
}

TEST(Augmentation, BothOffLeavesTheBatchUnchanged) {
  const AugmentOptions o = Small(0, false);
  EXPECT_FALSE(o.any());
  Tensor batch({3, 16});
  for (int64_t i = 0; i < batch.numel(); ++i) batch.at(i) = 0.5f * static_cast<float>(i);
  const Tensor before = batch.Clone();
  AugmentBatch(o, 1, 2, 3, &batch);
  EXPECT_EQ(batch.ToVector(), before.ToVector());
}

TEST(Augmentation, ConfigGivesFashionMnistGeometryAndBlack) {
  proto::TrainConfig c;
  EXPECT_FALSE(AugmentOptionsFromConfig(c).any());  // off by default
  c.mutable_recipe()->set_crop_padding(4);
  c.mutable_recipe()->set_horizontal_flip(true);
  const AugmentOptions o = AugmentOptionsFromConfig(c);
  EXPECT_EQ(o.crop_padding, 4);
  EXPECT_TRUE(o.horizontal_flip);
  EXPECT_EQ(o.image_size, 28);
  EXPECT_EQ(o.channels, 1);
  EXPECT_FLOAT_EQ(o.background, -0.2860f / 0.3530f);  // a 0 pixel after normalisation
}

}  // namespace
}  // namespace moe
