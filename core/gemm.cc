#include "core/gemm.h"

#include <cblas.h>
#include <glog/logging.h>

#include <strings.h>

#include <cstdlib>

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

std::string BlasCoreNote() {
  const char* core = openblas_get_corename();
  const char* forced = std::getenv("OPENBLAS_CORETYPE");
  const std::string name = core != nullptr ? core : "unknown";
  if (forced == nullptr || *forced == '\0') return name + " (OpenBLAS's pick for this CPU)";
  // OpenBLAS ignores a name it does not know (case-insensitively) and picks from the CPU.
  if (strcasecmp(name.c_str(), forced) == 0) return name + " (OPENBLAS_CORETYPE=" + forced + ")";
  return name + " (OPENBLAS_CORETYPE=" + forced +
         " not taken: OpenBLAS knows no such core; OpenBLAS's pick for this CPU)";
}

void SetBlasThreads(int n) {
  CHECK_GE(n, 1);
  openblas_set_num_threads(n);
}

namespace {
constexpr long kMaxBlasThreads = 1024;

// "n" or "n,..." (allow_list) -> n in [1, kMaxBlasThreads]; 0 otherwise.
int ParseCount(const std::string& v, bool allow_list) {
  const std::string head = allow_list ? v.substr(0, v.find(',')) : v;
  if (head.empty() || head.find_first_not_of("0123456789") != std::string::npos) return 0;
  if (head.size() > 4) return 0;
  const long n = std::strtol(head.c_str(), nullptr, 10);
  return n >= 1 && n <= kMaxBlasThreads ? static_cast<int>(n) : 0;
}
}  // namespace

BlasThreadChoice ParseBlasThreads(const char* openblas_num_threads, const char* omp_num_threads) {
  BlasThreadChoice c;
  const bool openblas = openblas_num_threads != nullptr && *openblas_num_threads != '\0';
  const bool omp = omp_num_threads != nullptr && *omp_num_threads != '\0';
  if (!openblas && !omp) {
    c.threads = 1;
    c.source = "default";
    return c;
  }
  const std::string name = openblas ? "OPENBLAS_NUM_THREADS" : "OMP_NUM_THREADS";
  const std::string value = openblas ? openblas_num_threads : omp_num_threads;
  c.threads = ParseCount(value, /*allow_list=*/!openblas);
  c.source = name + "=" + value;
  if (c.threads == 0)
    c.error = c.source + ": must be an integer in [1, " + std::to_string(kMaxBlasThreads) + "]";
  return c;
}

BlasThreadChoice SetBlasThreadsFromEnv() {
  BlasThreadChoice c =
      ParseBlasThreads(std::getenv("OPENBLAS_NUM_THREADS"), std::getenv("OMP_NUM_THREADS"));
  if (c.threads > 0) SetBlasThreads(c.threads);
  return c;
}

}  // namespace moe
