// Reader for gzipped IDX files (the MNIST / Fashion-MNIST format), via zlib.
//
// IDX: big-endian int32 magic (0x00000803 for uint8 images [N, rows, cols], 0x00000801 for uint8
// labels [N]), then the dimension sizes as big-endian int32, then the uint8 data row-major.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "models/nets/fashion_mnist.h"  // the normalisation constants the reader applies

namespace moe {

// The pixel value a network sees for a stored byte p: (p / 255 - mean) / std with the
// training set's statistics, the same float for the same byte everywhere.
float NormalisedPixel(uint8_t p);

// The images stay the file's bytes (a quarter of the memory of floats: 47 MB for the training
// set instead of 188 MB per rank, and a start-up without 188 MB of page faults and zero fills);
// a batch is normalised as it is gathered.
struct ImageDataset {
  int64_t count = 0;
  int rows = 0, cols = 0;
  std::vector<uint8_t> raw_pixels;  // count * rows * cols bytes as stored, image-major
  std::vector<int> labels;          // count, each in [0, 9]

  int64_t pixels_per_image() const { return static_cast<int64_t>(rows) * cols; }
  // dst[0, pixels_per_image()) = NormalisedPixel of image i's bytes.
  void CopyNormalisedImage(int64_t i, float* dst) const;
};

// Loads the first max_count images and labels (0 = all). On failure returns false, leaves *out
// cleared and sets *error to a one-line message naming the file and what is wrong: missing or
// unreadable file, bad magic number (with the value read), implausible dimensions, truncated
// data, image/label count mismatch, or a label outside [0, 9] (with its index and value).
// Never aborts, so the caller can fail every rank together with the message.
bool LoadIdxDataset(const std::string& images_gz, const std::string& labels_gz,
                    ImageDataset* out, std::string* error, int64_t max_count = 0);

}  // namespace moe
