#include "core/kernels/cuda/cublas_gemm.h"

#include <algorithm>
#include <climits>
#include <map>

#include "core/kernels/cuda/cuda_check.h"

namespace moe {

namespace {

// Handles are per (thread, device): a cuBLAS handle is bound to the device current at creation.
struct ThreadHandles {
  std::map<int, cublasHandle_t> by_device;
  ~ThreadHandles() {
    // At process exit the runtime may already be gone; a failed destroy is not worth a crash.
    for (auto& kv : by_device) cublasDestroy(kv.second);
  }
};

int AsInt(int64_t v, const char* what) {
  CHECK(v >= 0 && v <= INT_MAX) << "cuBLAS GEMM: " << what << " = " << v
                                << " does not fit a non-negative int";
  return static_cast<int>(v);
}

cublasOperation_t Op(bool trans) { return trans ? CUBLAS_OP_T : CUBLAS_OP_N; }

// Row-major leading-dimension checks (the stored row length must cover the row).
void CheckShapes(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, int64_t lda,
                 int64_t ldb, int64_t ldc) {
  CHECK_GE(lda, std::max<int64_t>(1, trans_a ? M : K)) << "lda too small";
  CHECK_GE(ldb, std::max<int64_t>(1, trans_b ? K : N)) << "ldb too small";
  CHECK_GE(ldc, std::max<int64_t>(1, N)) << "ldc too small";
}

}  // namespace

cublasHandle_t ThreadCublasHandle() {
  thread_local ThreadHandles handles;
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  auto it = handles.by_device.find(device);
  if (it != handles.by_device.end()) return it->second;
  cublasHandle_t h = nullptr;
  CUBLAS_CHECK(cublasCreate(&h));
  handles.by_device[device] = h;
  return h;
}

void CudaSgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
               const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
               int64_t ldc, cudaStream_t stream) {
  if (M == 0 || N == 0) return;
  CheckShapes(trans_a, trans_b, M, N, K, lda, ldb, ldc);
  cublasHandle_t h = ThreadCublasHandle();
  CUBLAS_CHECK(cublasSetStream(h, stream));
  // Column-major view: C^T (N x M) = op(B)^T (N x K) * op(A)^T (K x M).
  CUBLAS_CHECK(cublasSgemm(h, Op(trans_b), Op(trans_a), AsInt(N, "N"), AsInt(M, "M"),
                           AsInt(K, "K"), &alpha, B, AsInt(ldb, "ldb"), A, AsInt(lda, "lda"),
                           &beta, C, AsInt(ldc, "ldc")));
}

void CudaSgemmStridedBatched(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                             float alpha, const float* A, int64_t lda, int64_t stride_a,
                             const float* B, int64_t ldb, int64_t stride_b, float beta, float* C,
                             int64_t ldc, int64_t stride_c, int64_t batch, cudaStream_t stream) {
  if (M == 0 || N == 0 || batch == 0) return;
  CheckShapes(trans_a, trans_b, M, N, K, lda, ldb, ldc);
  cublasHandle_t h = ThreadCublasHandle();
  CUBLAS_CHECK(cublasSetStream(h, stream));
  CUBLAS_CHECK(cublasSgemmStridedBatched(
      h, Op(trans_b), Op(trans_a), AsInt(N, "N"), AsInt(M, "M"), AsInt(K, "K"), &alpha, B,
      AsInt(ldb, "ldb"), static_cast<long long>(stride_b), A, AsInt(lda, "lda"),
      static_cast<long long>(stride_a), &beta, C, AsInt(ldc, "ldc"),
      static_cast<long long>(stride_c), AsInt(batch, "batch")));
}

}  // namespace moe
