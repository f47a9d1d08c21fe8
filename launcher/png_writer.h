// A minimal PNG encoder for the trainer's pictures (routing heatmaps): 8-bit RGB, no
// interlacing, every scanline stored with filter 0. The image data is zlib-compressed and each
// chunk carries its CRC-32, both from zlib, which the project links already, so no image library
// is needed for a handful of small pictures.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moe {

// rgb: height rows of width pixels, 3 bytes (R, G, B) each, top row first. Returns the whole
// file's bytes.
std::string EncodePngRgb(int width, int height, const std::vector<uint8_t>& rgb);

// Writes EncodePngRgb's bytes to `path`, every step checked (WriteWholeFile); on failure returns
// false with "PATH: <step> failed: <strerror>" in *error.
bool WritePngRgb(const std::string& path, int width, int height, const std::vector<uint8_t>& rgb,
                 std::string* error);

}  // namespace moe
