#include "core/gemm.h"

#include <cblas.h>
#include <glog/logging.h>

extern "C" void openblas_set_num_threads(int);

namespace moe {

void Sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
           const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
           int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // BLAS leaves C untouched for K == 0 only when beta == 1; make it explicit.
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.f ? 0.f : beta * C[i * ldc + j];
    return;
  }
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), alpha, A,
              static_cast<int>(lda), B, static_cast<int>(ldb), beta, C, static_cast<int>(ldc));
}

void SgemmPacked(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                 const float* A, const float* B, float beta, float* C) {
  int64_t lda = trans_a ? M : K;
  int64_t ldb = trans_b ? K : N;
  Sgemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, N);
}

void SetBlasThreads(int n) {
  CHECK_GE(n, 1);
  openblas_set_num_threads(n);
}

}  // namespace moe
