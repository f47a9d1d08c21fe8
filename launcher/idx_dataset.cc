#include "launcher/idx_dataset.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <sstream>
#include <sys/stat.h>

namespace moe {

namespace {

constexpr uint32_t kImagesMagic = 0x00000803;  // uint8, 3 dims
constexpr uint32_t kLabelsMagic = 0x00000801;  // uint8, 1 dim
constexpr int64_t kMaxSide = 1 << 14;

std::string Hex(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08x", v);
  return buf;
}

// Owns a gzFile; every read reports a message that names the file.
class GzReader {
 public:
  explicit GzReader(const std::string& path) : path_(path) {}
  ~GzReader() {
    if (f_) gzclose(f_);
  }

  bool Open(std::string* error) {
    struct stat st;
    if (stat(path_.c_str(), &st) != 0) {
      *error = path_ + ": cannot open (" + std::strerror(errno) + ")";
      return false;
    }
    if (S_ISDIR(st.st_mode)) {
      *error = path_ + ": is a directory, expected a gzipped IDX file";
      return false;
    }
    f_ = gzopen(path_.c_str(), "rb");
    if (f_ == nullptr) {
      *error = path_ + ": cannot open (" + std::strerror(errno ? errno : EIO) + ")";
      return false;
    }
    gzbuffer(f_, 1 << 17);
    return true;
  }

  // Reads exactly n bytes; `what` says what they were for in the error message.
  bool Read(void* dst, int64_t n, const char* what, std::string* error) {
    unsigned char* p = static_cast<unsigned char*>(dst);
    int64_t done = 0;
    while (done < n) {
      const int64_t chunk = std::min<int64_t>(n - done, 1 << 30);
      const int got = gzread(f_, p + done, static_cast<unsigned>(chunk));
      if (got < 0) {
        int zerr = 0;
        const char* msg = gzerror(f_, &zerr);
        std::ostringstream os;
        os << path_ << ": read error in " << what << " after " << done << " of " << n
           << " bytes (" << (msg ? msg : "unknown zlib error") << ")";
        *error = os.str();
        return false;
      }
      if (got == 0) {
        int zerr = 0;
        const char* msg = gzerror(f_, &zerr);
        std::ostringstream os;
        os << path_ << ": truncated: " << what << " needs " << n << " bytes, only " << done
           << " present";
        if (zerr != Z_OK && zerr != Z_STREAM_END && msg && *msg) os << " (" << msg << ")";
        *error = os.str();
        return false;
      }
      done += got;
    }
    return true;
  }

  bool ReadBigEndian32(uint32_t* v, const char* what, std::string* error) {
    unsigned char b[4];
    if (!Read(b, 4, what, error)) return false;
    *v = (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | uint32_t{b[3]};
    return true;
  }

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  gzFile f_ = nullptr;
};

bool CheckMagic(const GzReader& r, uint32_t got, uint32_t want, const char* kind,
                std::string* error) {
  if (got == want) return true;
  *error = r.path() + ": bad magic number " + Hex(got) + ", expected " + Hex(want) + " (" + kind +
           " IDX file, uint8); is this the right file and is it gzipped IDX?";
  return false;
}

// The images file's header after its magic number: count, rows, cols, checked for plausibility.
bool ReadImagesHeader(GzReader& img, uint32_t* n_img, uint32_t* rows, uint32_t* cols,
                      std::string* error) {
  uint32_t magic = 0;
  if (!img.ReadBigEndian32(&magic, "the header (magic number)", error)) return false;
  if (!CheckMagic(img, magic, kImagesMagic, "an images", error)) return false;
  if (!img.ReadBigEndian32(n_img, "the header (image count)", error) ||
      !img.ReadBigEndian32(rows, "the header (rows)", error) ||
      !img.ReadBigEndian32(cols, "the header (cols)", error))
    return false;
  if (*n_img > static_cast<uint32_t>(std::numeric_limits<int32_t>::max()) || *rows == 0 ||
      *cols == 0 || *rows > kMaxSide || *cols > kMaxSide) {
    std::ostringstream os;
    os << img.path() << ": implausible header: count " << *n_img << ", rows " << *rows
       << ", cols " << *cols;
    *error = os.str();
    return false;
  }
  return true;
}

// The labels file's header, whose count must be the images file's.
bool ReadLabelsHeader(GzReader& lab, const GzReader& img, uint32_t n_img, std::string* error) {
  uint32_t magic = 0, n_lab = 0;
  if (!lab.ReadBigEndian32(&magic, "the header (magic number)", error)) return false;
  if (!CheckMagic(lab, magic, kLabelsMagic, "a labels", error)) return false;
  if (!lab.ReadBigEndian32(&n_lab, "the header (label count)", error)) return false;
  if (n_img != n_lab) {
    std::ostringstream os;
    os << "image/label count mismatch: " << img.path() << " holds " << n_img << " images but "
       << lab.path() << " holds " << n_lab << " labels";
    *error = os.str();
    return false;
  }
  return true;
}

// `count` labels, each a Fashion-MNIST class.
bool ReadLabels(GzReader& lab, int64_t count, std::vector<int>* labels, std::string* error) {
  std::vector<unsigned char> raw_labels(static_cast<size_t>(count));
  if (!lab.Read(raw_labels.data(), count, "the label data", error)) return false;
  labels->resize(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    if (raw_labels[i] >= kFashionMnistClasses) {
      std::ostringstream os;
      os << lab.path() << ": label " << int{raw_labels[i]} << " at index " << i
         << " is out of range [0, " << kFashionMnistClasses - 1 << "]";
      *error = os.str();
      return false;
    }
    (*labels)[i] = raw_labels[i];
  }
  return true;
}

// `n` pixel bytes as stored.
bool ReadPixels(GzReader& img, int64_t n, std::vector<uint8_t>* pixels, std::string* error) {
  pixels->resize(static_cast<size_t>(n));
  return img.Read(pixels->data(), n, "the pixel data", error);
}

// NormalisedPixel for every byte value, computed once.
struct NormalisedPixelTable {
  float value[256];
  NormalisedPixelTable() {
    const float scale = 1.f / (255.f * kFashionMnistStd);
    const float shift = kFashionMnistMean / kFashionMnistStd;
    for (int p = 0; p < 256; ++p) value[p] = static_cast<float>(p) * scale - shift;
  }
};
const NormalisedPixelTable& PixelTable() {
  static const NormalisedPixelTable table;
  return table;
}

bool LoadImpl(const std::string& images_gz, const std::string& labels_gz, ImageDataset* out,
              std::string* error, int64_t max_count) {
  if (max_count < 0) {
    *error = "max_count must be >= 0, got " + std::to_string(max_count);
    return false;
  }
  GzReader img(images_gz), lab(labels_gz);
  if (!img.Open(error) || !lab.Open(error)) return false;
  uint32_t n_img = 0, rows = 0, cols = 0;
  if (!ReadImagesHeader(img, &n_img, &rows, &cols, error)) return false;
  if (!ReadLabelsHeader(lab, img, n_img, error)) return false;
  const int64_t count = max_count > 0 ? std::min<int64_t>(max_count, n_img) : n_img;
  const int64_t per_image = static_cast<int64_t>(rows) * cols;
  if (!ReadLabels(lab, count, &out->labels, error)) return false;
  if (!ReadPixels(img, count * per_image, &out->raw_pixels, error)) return false;
  out->count = count;
  out->rows = static_cast<int>(rows);
  out->cols = static_cast<int>(cols);
  return true;
}

}  // namespace

float NormalisedPixel(uint8_t p) { return PixelTable().value[p]; }

void ImageDataset::CopyNormalisedImage(int64_t i, float* dst) const {
  const int64_t n = pixels_per_image();
  const uint8_t* src = raw_pixels.data() + i * n;
  const float* table = PixelTable().value;
  for (int64_t j = 0; j < n; ++j) dst[j] = table[src[j]];
}

bool LoadIdxDataset(const std::string& images_gz, const std::string& labels_gz,
                    ImageDataset* out, std::string* error, int64_t max_count) {
  *out = ImageDataset();
  std::string err;
  const bool ok = LoadImpl(images_gz, labels_gz, out, &err, max_count);
  if (!ok) {
    *out = ImageDataset();
    if (error) *error = err;
  }
  return ok;
}

}  // namespace moe
