// Row-major single-precision GEMM: C = alpha * op(A) * op(B) + beta * C.
// op(A) is M x K, op(B) is K x N, C is M x N; lda/ldb/ldc are row strides as stored.
// CPU tensors go to OpenBLAS cblas_sgemm (one thread per rank unless the user asks for more; see
// SetBlasThreadsFromEnv).
#pragma once
#include <cstdint>
#include <string>

namespace moe {

void Sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
           const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
           int64_t ldc);

// Convenience for packed operands: lda/ldb/ldc derived from the shapes.
void SgemmPacked(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                 const float* A, const float* B, float beta, float* C);

// Pins OpenBLAS to n threads. Under mpirun every rank must use 1 or the 2-core machine thrashes.
void SetBlasThreads(int n);

// The OpenBLAS kernel set ("core") this process runs and where the choice came from, for start-up
// logs and benchmark headers: "Cooperlake (OpenBLAS's pick for this CPU)" or "Haswell
// (OPENBLAS_CORETYPE=Haswell)". OpenBLAS picks once, when the library loads, from the CPU, unless
// OPENBLAS_CORETYPE names a core. The pick matters: on an AVX-512 AMD EPYC, OpenBLAS 0.3.21's own
// pick (Cooperlake, AVX-512) trains vmoe_tiny 1.4x as fast as its AVX2 kernels (Haswell), which an
// environment that sets OPENBLAS_CORETYPE=Haswell imposes (tests/bench/RESULTS.md).
std::string BlasCoreNote();

// The BLAS thread count a user asks for: OPENBLAS_NUM_THREADS when set (non-empty), else
// OMP_NUM_THREADS (its first entry: "4,2" is OpenMP's nested form), else 1 per rank.
struct BlasThreadChoice {
  int threads = 0;     // 0 when the variable holds no count in [1, 1024]
  std::string source;  // "OPENBLAS_NUM_THREADS=2", "OMP_NUM_THREADS=4", "default"
  std::string error;   // "OPENBLAS_NUM_THREADS=abc: must be an integer in [1, 1024]"
};
BlasThreadChoice ParseBlasThreads(const char* openblas_num_threads, const char* omp_num_threads);
// ParseBlasThreads on this process's environment, applied with SetBlasThreads when valid.
BlasThreadChoice SetBlasThreadsFromEnv();

}  // namespace moe
