#include "launcher/png_writer.h"

#include <glog/logging.h>
#include <zlib.h>

#include "launcher/output_files.h"

namespace moe {
namespace {

// PNG stores every integer big-endian.
void AppendU32(std::string* out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out->push_back(static_cast<char>((v >> shift) & 0xff));
}

// A chunk is length, type, data, then the CRC of type and data (not of the length).
void AppendChunk(std::string* out, const char type[4], const std::string& data) {
  AppendU32(out, static_cast<uint32_t>(data.size()));
  const size_t type_at = out->size();
  out->append(type, 4);
  out->append(data);
  uLong crc = crc32(0L, Z_NULL, 0);
  crc = crc32(crc, reinterpret_cast<const Bytef*>(out->data() + type_at), 4 + data.size());
  AppendU32(out, static_cast<uint32_t>(crc));
}

}  // namespace

std::string EncodePngRgb(int width, int height, const std::vector<uint8_t>& rgb) {
  CHECK_GT(width, 0);
  CHECK_GT(height, 0);
  const size_t stride = static_cast<size_t>(width) * 3;
  CHECK_EQ(rgb.size(), stride * height) << "EncodePngRgb: pixel buffer does not match the size";

  std::string png("\x89PNG\r\n\x1a\n", 8);
  std::string ihdr;
  AppendU32(&ihdr, static_cast<uint32_t>(width));
  AppendU32(&ihdr, static_cast<uint32_t>(height));
  ihdr.push_back(8);  // bit depth
  ihdr.push_back(2);  // colour type: truecolour (RGB)
  ihdr.push_back(0);  // compression: deflate
  ihdr.push_back(0);  // filter method 0
  ihdr.push_back(0);  // no interlace
  AppendChunk(&png, "IHDR", ihdr);

  // Each scanline is prefixed by its filter type; 0 (none) keeps the encoder trivial, and the
  // flat colour cells of a heatmap compress well without prediction.
  std::vector<uint8_t> raw;
  raw.reserve((stride + 1) * height);
  for (int y = 0; y < height; ++y) {
    raw.push_back(0);
    raw.insert(raw.end(), rgb.begin() + y * stride, rgb.begin() + (y + 1) * stride);
  }
  uLongf packed_size = compressBound(static_cast<uLong>(raw.size()));
  std::string packed(packed_size, '\0');
  const int rc = compress2(reinterpret_cast<Bytef*>(&packed[0]), &packed_size, raw.data(),
                           static_cast<uLong>(raw.size()), Z_BEST_COMPRESSION);
  CHECK_EQ(rc, Z_OK) << "zlib compress2 failed";
  packed.resize(packed_size);
  AppendChunk(&png, "IDAT", packed);
  AppendChunk(&png, "IEND", std::string());
  return png;
}

bool WritePngRgb(const std::string& path, int width, int height, const std::vector<uint8_t>& rgb,
                 std::string* error) {
  return WriteWholeFile(path, EncodePngRgb(width, height, rgb), error);
}

}  // namespace moe
