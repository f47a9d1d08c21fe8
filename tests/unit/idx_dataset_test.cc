// Fashion-MNIST reader: the real test set, and each malformed-file error, checked on small
// gzipped IDX files written to a temporary directory.
#include <gtest/gtest.h>
#include <zlib.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "launcher/idx_dataset.h"

namespace moe {
namespace {

const std::string kDir = "/usr/share/datasets/fashion-mnist/";

void PutBE32(std::vector<unsigned char>* b, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b->push_back(static_cast<unsigned char>(v >> s));
}

std::string WriteGz(const std::string& name, const std::vector<unsigned char>& bytes) {
  const std::string path = ::testing::TempDir() + "/idx_test_" + name + ".gz";
  gzFile f = gzopen(path.c_str(), "wb");
  EXPECT_NE(f, nullptr) << path;
  if (!bytes.empty()) {
    EXPECT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())),
              static_cast<int>(bytes.size()));
  }
  gzclose(f);
  return path;
}

// `count` images of rows x cols whose pixel j of image i is (i * 7 + j) % 256, but only
// `pixel_bytes` bytes of pixel data (default: all).
std::string Images(const std::string& name, uint32_t count, uint32_t rows, uint32_t cols,
                   int64_t pixel_bytes = -1, uint32_t magic = 0x00000803) {
  std::vector<unsigned char> b;
  PutBE32(&b, magic);
  PutBE32(&b, count);
  PutBE32(&b, rows);
  PutBE32(&b, cols);
  const int64_t n = pixel_bytes >= 0 ? pixel_bytes : int64_t{count} * rows * cols;
  for (int64_t k = 0; k < n; ++k) {
    const int64_t i = k / (rows * cols), j = k % (rows * cols);
    b.push_back(static_cast<unsigned char>((i * 7 + j) % 256));
  }
  return WriteGz(name, b);
}

std::string Labels(const std::string& name, const std::vector<unsigned char>& labels,
                   uint32_t magic = 0x00000801, int64_t header_count = -1) {
  std::vector<unsigned char> b;
  PutBE32(&b, magic);
  PutBE32(&b, header_count >= 0 ? static_cast<uint32_t>(header_count)
                                : static_cast<uint32_t>(labels.size()));
  b.insert(b.end(), labels.begin(), labels.end());
  return WriteGz(name, b);
}

// Loads and expects failure; returns the error.
std::string LoadError(const std::string& images, const std::string& labels) {
  ImageDataset d;
  std::string err;
  EXPECT_FALSE(LoadIdxDataset(images, labels, &d, &err));
  EXPECT_EQ(d.count, 0);
  EXPECT_TRUE(d.raw_pixels.empty());
  EXPECT_FALSE(err.empty());
  std::printf("  error: %s\n", err.c_str());
  return err;
}

TEST(IdxDataset, LoadsTheFashionMnistTestSet) {
  ImageDataset d;
  std::string err;
  ASSERT_TRUE(LoadIdxDataset(kDir + "t10k-images-idx3-ubyte.gz", kDir + "t10k-labels-idx1-ubyte.gz",
                             &d, &err))
      << err;
  EXPECT_EQ(d.count, 10000);
  EXPECT_EQ(d.rows, 28);
  EXPECT_EQ(d.cols, 28);
  ASSERT_EQ(d.raw_pixels.size(), 10000u * 784);
  ASSERT_EQ(d.labels.size(), 10000u);
  std::vector<float> pixels(d.raw_pixels.size());
  for (int64_t i = 0; i < d.count; ++i) d.CopyNormalisedImage(i, pixels.data() + i * 784);
  std::vector<int> hist(10, 0);
  for (int l : d.labels) {
    ASSERT_GE(l, 0);
    ASSERT_LE(l, 9);
    ++hist[l];
  }
  for (int c = 0; c < 10; ++c) EXPECT_EQ(hist[c], 1000) << "class " << c;
  // Normalised with the training-set statistics, the test set is close to mean 0, std 1.
  double sum = 0, sq = 0;
  for (float p : pixels) {
    sum += p;
    sq += double{p} * p;
  }
  const double mean = sum / pixels.size();
  const double stddev = std::sqrt(sq / pixels.size() - mean * mean);
  EXPECT_NEAR(mean, 0.0, 0.02);
  EXPECT_NEAR(stddev, 1.0, 0.02);
  const float lo = -kFashionMnistMean / kFashionMnistStd;
  const float hi = (1.f - kFashionMnistMean) / kFashionMnistStd;
  for (float p : pixels) {
    ASSERT_GE(p, lo - 1e-5f);
    ASSERT_LE(p, hi + 1e-5f);
  }
}

TEST(IdxDataset, MaxCountLoadsAPrefix) {
  ImageDataset all, some;
  std::string err;
  const std::string img = kDir + "t10k-images-idx3-ubyte.gz", lab = kDir + "t10k-labels-idx1-ubyte.gz";
  ASSERT_TRUE(LoadIdxDataset(img, lab, &some, &err, 100)) << err;
  ASSERT_TRUE(LoadIdxDataset(img, lab, &all, &err, 1000)) << err;
  EXPECT_EQ(some.count, 100);
  ASSERT_EQ(some.raw_pixels.size(), 100u * 784);
  EXPECT_TRUE(std::equal(some.raw_pixels.begin(), some.raw_pixels.end(), all.raw_pixels.begin()));
  EXPECT_TRUE(std::equal(some.labels.begin(), some.labels.end(), all.labels.begin()));
}

TEST(IdxDataset, SmallFileValuesAndNormalisation) {
  const std::string img = Images("ok_images", 3, 2, 5);
  const std::string lab = Labels("ok_labels", {9, 0, 4});
  ImageDataset d;
  std::string err;
  ASSERT_TRUE(LoadIdxDataset(img, lab, &d, &err)) << err;
  EXPECT_EQ(d.count, 3);
  EXPECT_EQ(d.rows, 2);
  EXPECT_EQ(d.cols, 5);
  EXPECT_EQ(d.labels, (std::vector<int>{9, 0, 4}));
  for (int i = 0; i < 3; ++i) {
    float image[10];
    d.CopyNormalisedImage(i, image);
    for (int j = 0; j < 10; ++j) {
      const float raw = static_cast<float>((i * 7 + j) % 256);
      EXPECT_EQ(d.raw_pixels[i * 10 + j], (i * 7 + j) % 256) << i << "," << j;
      EXPECT_NEAR(image[j], (raw / 255.f - 0.2860f) / 0.3530f, 1e-6) << i << "," << j;
    }
  }
}

// Every byte value maps to the float the reader produced when it stored floats (p * scale -
// shift, each rounded once), so training runs keep their bits; and to (p / 255 - mean) / std
// within the roundings of that expression: scale = 1 / (255 std) carries two (2u relative), the
// product one more, shift = mean / std one, the difference one: |error| <= (3 |p scale| +
// |shift| + |result|) u, u = 2^-24.
TEST(IdxDataset, NormalisedPixelOfEveryByte) {
  const float scale = 1.f / (255.f * kFashionMnistStd);
  const float shift = kFashionMnistMean / kFashionMnistStd;
  for (int p = 0; p < 256; ++p) {
    const float expected = static_cast<float>(p) * scale - shift;
    EXPECT_EQ(NormalisedPixel(static_cast<uint8_t>(p)), expected) << "byte " << p;
    const double exact = (p / 255.0 - kFashionMnistMean) / kFashionMnistStd;
    const double u = std::ldexp(1.0, -24);
    const double bound = (3 * std::fabs(p * double{scale}) + shift + std::fabs(exact)) * u;
    EXPECT_NEAR(NormalisedPixel(static_cast<uint8_t>(p)), exact, bound) << "byte " << p;
  }
}

TEST(IdxDataset, MissingFile) {
  const std::string lab = Labels("missing_labels", {1});
  const std::string missing = ::testing::TempDir() + "/no_such_images.gz";
  const std::string err = LoadError(missing, lab);
  EXPECT_NE(err.find(missing), std::string::npos) << err;
  EXPECT_NE(err.find("cannot open"), std::string::npos) << err;
}

TEST(IdxDataset, BadMagicNamesFileAndValue) {
  const std::string img = Images("badmagic_images", 1, 2, 2, -1, 0x00000802);
  const std::string lab = Labels("badmagic_labels", {1});
  std::string err = LoadError(img, lab);
  EXPECT_NE(err.find(img), std::string::npos) << err;
  EXPECT_NE(err.find("bad magic number 0x00000802"), std::string::npos) << err;
  // A labels file given where images are expected (and vice versa) is caught by its magic.
  err = LoadError(lab, img);
  EXPECT_NE(err.find("bad magic number 0x00000801"), std::string::npos) << err;
}

TEST(IdxDataset, TruncatedPixelsAndHeader) {
  const std::string img = Images("trunc_images", 3, 4, 4, /*pixel_bytes=*/40);
  const std::string lab = Labels("trunc_labels", {1, 2, 3});
  std::string err = LoadError(img, lab);
  EXPECT_NE(err.find(img), std::string::npos) << err;
  EXPECT_NE(err.find("truncated"), std::string::npos) << err;
  EXPECT_NE(err.find("48 bytes, only 40"), std::string::npos) << err;

  const std::string header_only = WriteGz("trunc_header", {0, 0, 8, 3, 0, 0});
  err = LoadError(header_only, lab);
  EXPECT_NE(err.find("truncated"), std::string::npos) << err;
  EXPECT_NE(err.find("header"), std::string::npos) << err;

  const std::string labels_short = Labels("trunc_labels2", {1, 2}, 0x00000801, /*header_count=*/3);
  err = LoadError(Images("trunc_images2", 3, 4, 4), labels_short);
  EXPECT_NE(err.find(labels_short), std::string::npos) << err;
  EXPECT_NE(err.find("truncated"), std::string::npos) << err;
}

TEST(IdxDataset, CorruptGzipStream) {
  // A gzip member cut in half: zlib reports an unexpected end / data error, not a crash.
  const std::string full = Images("cut_src", 50, 28, 28);
  std::FILE* f = std::fopen(full.c_str(), "rb");
  ASSERT_NE(f, nullptr);
  std::vector<unsigned char> bytes(1 << 20);
  bytes.resize(std::fread(bytes.data(), 1, bytes.size(), f));
  std::fclose(f);
  const std::string cut = ::testing::TempDir() + "/idx_test_cut.gz";
  f = std::fopen(cut.c_str(), "wb");
  std::fwrite(bytes.data(), 1, bytes.size() / 2, f);
  std::fclose(f);
  const std::string err = LoadError(cut, Labels("cut_labels", std::vector<unsigned char>(50, 1)));
  EXPECT_NE(err.find(cut), std::string::npos) << err;
}

TEST(IdxDataset, CountMismatch) {
  const std::string img = Images("mismatch_images", 3, 2, 2);
  const std::string lab = Labels("mismatch_labels", {1, 2});
  const std::string err = LoadError(img, lab);
  EXPECT_NE(err.find("count mismatch"), std::string::npos) << err;
  EXPECT_NE(err.find("3 images"), std::string::npos) << err;
  EXPECT_NE(err.find("2 labels"), std::string::npos) << err;
}

TEST(IdxDataset, LabelOutOfRange) {
  const std::string img = Images("badlabel_images", 3, 2, 2);
  const std::string lab = Labels("badlabel_labels", {1, 12, 3});
  const std::string err = LoadError(img, lab);
  EXPECT_NE(err.find(lab), std::string::npos) << err;
  EXPECT_NE(err.find("label 12 at index 1"), std::string::npos) << err;
}

}  // namespace
}  // namespace moe
