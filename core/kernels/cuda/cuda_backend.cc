// CudaBackend (core/kernels/cuda/cuda_backend.h): device memory, the GEMM and the elementwise ops.
#include "core/kernels/cuda/cuda_backend.h"

#include <glog/logging.h>

#include <limits>

#include "core/kernels/cuda/cublas_gemm.h"
#include "core/kernels/cuda/dense_kernels.h"
#include "core/kernels/cuda/device_memory_cuda.h"
#include "core/kernels/cuda/transpose_kernels.h"

namespace moe {

const Backend& TheCudaBackend() {
  static const CudaBackend* backend = new CudaBackend();
  return *backend;
}

void* CudaBackend::Allocate(size_t bytes) const { return CudaAlloc(bytes); }

void CudaBackend::Free(void* p) const { CudaFree(p); }

void CudaBackend::Fill(float* p, int64_t count, float value) const {
  CudaFill(p, static_cast<size_t>(count), value);
}

void CudaBackend::Copy(void* dst, Device dst_device, const void* src, Device src_device,
                       size_t bytes) const {
  CudaCopy(dst, dst_device, src, src_device, bytes);
}

Tensor CudaBackend::NewTensor(std::vector<int64_t> shape, DType dtype) const {
  Tensor t(std::move(shape), Device::kCUDA, dtype);
  if (t.numel() > 0 && PoisonNewDeviceTensors()) {
    float* words = dtype == DType::kFloat32 ? t.data() : reinterpret_cast<float*>(t.int32_data());
    CudaFill(words, static_cast<size_t>(t.numel()), std::numeric_limits<float>::quiet_NaN());
  }
  return t;
}

void CudaBackend::Gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                       const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                       float* C, int64_t ldc) const {
  CudaSgemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void CudaBackend::AddInPlace(Tensor* y, const Tensor& x) const {
  if (y->numel() > 0) AddInPlaceCuda(y->data(), x.data(), y->numel());
}

void CudaBackend::AddRowVector(Tensor* y, const Tensor& v) const {
  const int64_t cols = v.numel(), rows = cols > 0 ? y->numel() / cols : 0;
  if (rows > 0) BiasAddRowsCuda(y->data(), v.data(), rows, cols);
}

void CudaBackend::AccumulateColumnSums(const Tensor& dy, Tensor* dv) const {
  const int64_t cols = dv->numel(), rows = cols > 0 ? dy.numel() / cols : 0;
  if (rows > 0) ColumnSumAccumulateCuda(dy.data(), rows, cols, dv->data());
}

Tensor CudaBackend::TransposeBlocks(const Tensor& x, int64_t batch, int64_t rows,
                                    int64_t cols) const {
  Tensor y = NewTensor({batch * cols, rows});
  BatchedTransposeCuda(x.data(), batch, rows, cols, y.data());
  return y;
}

}  // namespace moe
