// CpuBackend (core/cpu_backend.h): host memory, the GEMM and the elementwise ops.
#include "core/cpu_backend.h"

#include <glog/logging.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/gemm.h"

namespace moe {

const Backend& TheCpuBackend() {
  static const CpuBackend* backend = new CpuBackend();
  return *backend;
}

void* CpuBackend::Allocate(size_t bytes) const {
  // 64-byte alignment keeps OpenBLAS and vectorised loops on their fast path.
  void* p = nullptr;
  const size_t rounded = (bytes + 63) / 64 * 64;
  CHECK_EQ(posix_memalign(&p, 64, rounded), 0) << "host allocation of " << bytes << " bytes failed";
  return p;
}

void CpuBackend::Free(void* p) const { free(p); }

void CpuBackend::Fill(float* p, int64_t count, float value) const {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  if (bits == 0) {  // +0 (zeroing every gradient each step): the C library's widest stores
    std::memset(p, 0, static_cast<size_t>(count) * sizeof(float));
    return;
  }
  std::fill(p, p + count, value);
}

void CpuBackend::Copy(void* dst, Device dst_device, const void* src, Device src_device,
                      size_t bytes) const {
  CHECK(dst_device == Device::kCPU && src_device == Device::kCPU)
      << "the host backend copies host memory only (" << DeviceName(src_device) << " -> "
      << DeviceName(dst_device) << ")";
  std::memcpy(dst, src, bytes);
}

Tensor CpuBackend::NewTensor(std::vector<int64_t> shape, DType dtype) const {
  return Tensor(std::move(shape), Device::kCPU, dtype);
}

void CpuBackend::Gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                      const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                      float* C, int64_t ldc) const {
  Sgemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void CpuBackend::AddInPlace(Tensor* y, const Tensor& x) const {
  float* yd = y->data();
  const float* xd = x.data();
  for (int64_t i = 0; i < y->numel(); ++i) yd[i] += xd[i];
}

void CpuBackend::AddRowVector(Tensor* y, const Tensor& v) const {
  const int64_t cols = v.numel(), rows = cols > 0 ? y->numel() / cols : 0;
  const float* vd = v.data();
  for (int64_t r = 0; r < rows; ++r) {
    float* yr = y->data() + r * cols;
    for (int64_t j = 0; j < cols; ++j) yr[j] += vd[j];
  }
}

void CpuBackend::AccumulateColumnSums(const Tensor& dy, Tensor* dv) const {
  const int64_t cols = dv->numel(), rows = cols > 0 ? dy.numel() / cols : 0;
  std::vector<double> sums(cols, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = dy.data() + r * cols;
    for (int64_t j = 0; j < cols; ++j) sums[j] += row[j];
  }
  for (int64_t j = 0; j < cols; ++j) dv->data()[j] += static_cast<float>(sums[j]);
}

Tensor CpuBackend::TransposeBlocks(const Tensor& x, int64_t batch, int64_t rows,
                                   int64_t cols) const {
  Tensor y({batch * cols, rows});
  const float* in = x.data();
  float* out = y.data();
  for (int64_t b = 0; b < batch; ++b) {
    const float* src = in + b * rows * cols;
    float* dst = out + b * rows * cols;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) dst[c * rows + r] = src[r * cols + c];
  }
  return y;
}

}  // namespace moe
