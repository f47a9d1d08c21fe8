// Row-major single-precision GEMM on device pointers via cuBLAS, same contract as core/gemm.h:
//   C = alpha * op(A) * op(B) + beta * C,  op(A): M x K, op(B): K x N, C: M x N,
//   lda/ldb/ldc the row strides as stored (row-major).
// cuBLAS is column-major; a row-major M x N matrix is its column-major N x M transpose, so
// C^T = op(B)^T op(A)^T is computed by passing B as the first operand and A as the second with
// the dimensions swapped: cublasSgemm(opB, opA, N, M, K, B, ldb, A, lda, C, ldc).
// Math mode is cuBLAS's default (full FP32, no TF32). Calls are asynchronous on `stream`.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace moe {

// The calling thread's cuBLAS handle for the current device, created on first use and kept for
// the thread's lifetime.
cublasHandle_t ThreadCublasHandle();

void CudaSgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
               const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
               int64_t ldc, cudaStream_t stream = nullptr);

// `batch` independent GEMMs (e.g. one per local expert): matrix i of A starts at A + i*stride_a,
// likewise B and C; strides in elements. A stride of 0 reuses the same matrix for every batch.
void CudaSgemmStridedBatched(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                             float alpha, const float* A, int64_t lda, int64_t stride_a,
                             const float* B, int64_t ldb, int64_t stride_b, float beta, float* C,
                             int64_t ldc, int64_t stride_c, int64_t batch,
                             cudaStream_t stream = nullptr);

}  // namespace moe
