// The PNG encoder: a file it writes must be a valid PNG that a decoder reads back to the same
// pixels. The test is its own small decoder (chunk walk, CRC per chunk, zlib's uncompress), so it
// does not depend on an image library either.
#include "launcher/png_writer.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace moe {
namespace {

uint32_t ReadU32(const std::string& s, size_t at) {
  return (uint32_t(uint8_t(s[at])) << 24) | (uint32_t(uint8_t(s[at + 1])) << 16) |
         (uint32_t(uint8_t(s[at + 2])) << 8) | uint32_t(uint8_t(s[at + 3]));
}

struct Chunk {
  std::string type, data;
};

// Splits the file after the signature into chunks, checking each chunk's CRC on the way.
std::vector<Chunk> ReadChunks(const std::string& png) {
  std::vector<Chunk> chunks;
  size_t at = 8;
  while (at < png.size()) {
    EXPECT_LE(at + 12, png.size()) << "truncated chunk header";
    if (at + 12 > png.size()) break;
    const uint32_t len = ReadU32(png, at);
    EXPECT_LE(at + 12 + len, png.size()) << "truncated chunk";
    if (at + 12 + len > png.size()) break;
    Chunk c{png.substr(at + 4, 4), png.substr(at + 8, len)};
    const uLong crc = crc32(crc32(0L, Z_NULL, 0),
                            reinterpret_cast<const Bytef*>(png.data() + at + 4), 4 + len);
    EXPECT_EQ(ReadU32(png, at + 8 + len), static_cast<uint32_t>(crc)) << "CRC of " << c.type;
    chunks.push_back(c);
    at += 12 + len;
  }
  return chunks;
}

std::vector<uint8_t> TestPattern(int w, int h) {
  std::vector<uint8_t> rgb(static_cast<size_t>(w) * h * 3);
  for (size_t i = 0; i < rgb.size(); ++i) rgb[i] = static_cast<uint8_t>((i * 37 + 11) % 256);
  return rgb;
}

TEST(PngWriter, EncodesSignatureChunksAndPixels) {
  const int w = 5, h = 3;
  const std::vector<uint8_t> rgb = TestPattern(w, h);
  const std::string png = EncodePngRgb(w, h, rgb);
  ASSERT_GE(png.size(), 8u);
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));

  const std::vector<Chunk> chunks = ReadChunks(png);
  ASSERT_GE(chunks.size(), 3u);
  EXPECT_EQ(chunks.front().type, "IHDR");
  EXPECT_EQ(chunks.back().type, "IEND");
  EXPECT_TRUE(chunks.back().data.empty());

  const std::string& ihdr = chunks.front().data;
  ASSERT_EQ(ihdr.size(), 13u);
  EXPECT_EQ(ReadU32(ihdr, 0), uint32_t(w));
  EXPECT_EQ(ReadU32(ihdr, 4), uint32_t(h));
  EXPECT_EQ(ihdr[8], 8);   // bit depth
  EXPECT_EQ(ihdr[9], 2);   // RGB
  EXPECT_EQ(ihdr[10], 0);  // deflate
  EXPECT_EQ(ihdr[11], 0);  // filter method
  EXPECT_EQ(ihdr[12], 0);  // no interlace

  // The image data may be split over several IDAT chunks; together they are one zlib stream.
  std::string idat;
  for (const Chunk& c : chunks)
    if (c.type == "IDAT") idat += c.data;
  std::vector<uint8_t> raw(static_cast<size_t>(h) * (1 + w * 3) + 16);
  uLongf raw_size = raw.size();
  ASSERT_EQ(uncompress(raw.data(), &raw_size, reinterpret_cast<const Bytef*>(idat.data()),
                       idat.size()),
            Z_OK);
  ASSERT_EQ(raw_size, static_cast<uLongf>(h * (1 + w * 3)));
  for (int y = 0; y < h; ++y) {
    const uint8_t* line = raw.data() + y * (1 + w * 3);
    EXPECT_EQ(line[0], 0) << "filter type of scanline " << y;
    for (int x = 0; x < w * 3; ++x) EXPECT_EQ(line[1 + x], rgb[y * w * 3 + x]) << y << "," << x;
  }
}

TEST(PngWriter, WritesTheEncodedBytesToAFile) {
  const int w = 2, h = 4;
  const std::vector<uint8_t> rgb = TestPattern(w, h);
  const std::string path = ::testing::TempDir() + "png_writer_test.png";
  std::string error;
  ASSERT_TRUE(WritePngRgb(path, w, h, rgb, &error)) << error;
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(bytes, EncodePngRgb(w, h, rgb));
  std::remove(path.c_str());
}

TEST(PngWriter, ReportsAnUnwritablePath) {
  std::string error;
  EXPECT_FALSE(WritePngRgb("/nonexistent-dir/x.png", 1, 1, {0, 0, 0}, &error));
  EXPECT_NE(error.find("/nonexistent-dir/x.png"), std::string::npos) << error;
}

}  // namespace
}  // namespace moe
