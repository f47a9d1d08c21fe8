// Row-major single-precision GEMM: C = alpha * op(A) * op(B) + beta * C.
// op(A) is M x K, op(B) is K x N, C is M x N; lda/ldb/ldc are row strides as stored.
// CPU tensors go to OpenBLAS cblas_sgemm (one thread per rank; see SetBlasThreads).
#pragma once
#include <cstdint>

namespace moe {

void Sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
           const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
           int64_t ldc);

// Convenience for packed operands: lda/ldb/ldc derived from the shapes.
void SgemmPacked(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                 const float* A, const float* B, float beta, float* C);

// Pins OpenBLAS to n threads. Under mpirun every rank must use 1 or the 2-core machine thrashes.
void SetBlasThreads(int n);

}  // namespace moe
