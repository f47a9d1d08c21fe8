// GPU smoke tests: the GELU kernels and the cuBLAS row-major GEMM against CPU references, and the
// device-memory round trip. Without a usable GPU every test that needs one reports SKIPPED (never
// passed). NcclVersion runs everywhere: ncclGetVersion needs no device.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "comm/nccl/nccl_smoke.h"
#include "core/backend.h"
#include "core/kernels/cuda/cublas_gemm.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/gelu_kernels.h"
#include "tests/gpu/gpu_test_util.h"

namespace moe {
namespace {


double GeluRef(double x) { return 0.5 * x * std::erfc(-x / std::sqrt(2.0)); }

// Error bounds of the float kernels (gelu_kernels.cu), derived from the operations they do, in
// units of the float unit roundoff u = 2^-24 (one rounding: relative error <= u; one ulp <= 2u).
//   cdf = 0.5 * erfcf(t), t = -x * fl(1/sqrt2): t carries <= 2u (constant, product); erfc
//     amplifies a relative error of t by kappa(t) = |t erfc'(t) / erfc(t)|; erfcf itself is
//     within 4 ulp (CUDA Math API) = 8u; the 0.5 is exact. cdf: (8 + 2 kappa) u.
//   pdf = fl(1/sqrt(2 pi)) * expf(v), v = -0.5 x * x: v carries u (the product; -0.5x is exact),
//     i.e. an absolute |v| u = x^2/2 u, which exp turns into a relative x^2/2 u; expf is within
//     2 ulp = 4u; the constant and the product u each. x * pdf: one more u. (x^2/2 + 7) u.
//   forward y = (0.5 x) * erfcf(t): (9 + 2 kappa) u relative to |y|.
//   backward dx = dy * (cdf + x pdf): the two terms' own errors, plus u for the sum and u for the
//     product with dy, both relative to |dy| (cdf + |x| pdf) -- the sum of the magnitudes of the
//     terms, the scale the rounding errors live on: near x = -0.75 the terms cancel (GELU' = 0 at
//     x = -0.7518), so the result is ~1e-3 of the terms and its error relative to itself is not
//     small even when every operation is correctly rounded.
// First-order bounds; second-order terms are below 1e-12 relative here, hence the 1.01.
constexpr double kU = 5.9604644775390625e-08;  // 2^-24

double ErfcKappa(double t) {
  return 2.0 * std::fabs(t) * std::exp(-t * t) / (std::sqrt(M_PI) * std::erfc(t));
}
double GeluForwardBound(double x) {
  return 1.01 * (9.0 + 2.0 * ErfcKappa(-x / std::sqrt(2.0))) * kU * std::fabs(GeluRef(x));
}
struct GeluGrad {
  double value, bound;
};
GeluGrad GeluGradRef(double x, double dy) {
  const double cdf = 0.5 * std::erfc(-x / std::sqrt(2.0));
  const double xpdf = x * std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI);
  const double terms = cdf * (8.0 + 2.0 * ErfcKappa(-x / std::sqrt(2.0))) +
                       std::fabs(xpdf) * (0.5 * x * x + 7.0) + 2.0 * (cdf + std::fabs(xpdf));
  return {dy * (cdf + xpdf), 1.01 * kU * std::fabs(dy) * terms};
}

std::vector<float> GeluInputs(size_t n) {
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = -8.f + 16.f * static_cast<float>(i) / (n - 1);  // [-8, 8]
  x[n / 2] = 0.f;
  return x;
}

void CheckGelu(size_t n, size_t offset) {
  SCOPED_TRACE("n=" + std::to_string(n) + " offset=" + std::to_string(offset));
  const std::vector<float> x = GeluInputs(n);
  std::vector<float> dy(n);
  std::mt19937 gen(7);
  std::uniform_real_distribution<float> u(-2.f, 2.f);
  for (auto& v : dy) v = u(gen);
  // offset shifts every pointer off 16-byte alignment to take the scalar path.
  DeviceBuffer dx_in(n + offset), ddy(n + offset), dy_out(n + offset), ddx(n + offset);
  std::vector<float> xpad(n + offset, 0.f), dypad(n + offset, 0.f);
  std::copy(x.begin(), x.end(), xpad.begin() + offset);
  std::copy(dy.begin(), dy.end(), dypad.begin() + offset);
  dx_in.Upload(xpad);
  ddy.Upload(dypad);
  dy_out.Poison();
  ddx.Poison();
  GeluForwardCuda(dx_in.p + offset, dy_out.p + offset, n);
  GeluBackwardCuda(dx_in.p + offset, ddy.p + offset, ddx.p + offset, n);
  const std::vector<float> y = dy_out.Download(), g = ddx.Download();
  // worst error / its bound over all elements: must stay <= 1.
  double worst_y = 0, worst_g = 0;
  size_t at_y = 0, at_g = 0;
  for (size_t i = 0; i < n; ++i) {
    const float yi = y[offset + i], gi = g[offset + i];
    ASSERT_FALSE(std::isnan(yi)) << "forward left element " << i << " unwritten";
    ASSERT_FALSE(std::isnan(gi)) << "backward left element " << i << " unwritten";
    const double ey = std::fabs(yi - GeluRef(x[i])), by = GeluForwardBound(x[i]);
    const GeluGrad ref = GeluGradRef(x[i], dy[i]);
    const double eg = std::fabs(gi - ref.value);
    // A zero bound (y = 0 at x = 0, dy = 0) demands an exact result.
    const double ry = by > 0 ? ey / by : (ey > 0 ? 2.0 : 0.0);
    const double rg = ref.bound > 0 ? eg / ref.bound : (eg > 0 ? 2.0 : 0.0);
    if (ry > worst_y) worst_y = ry, at_y = i;
    if (rg > worst_g) worst_g = rg, at_g = i;
  }
  EXPECT_LE(worst_y, 1.0) << "GELU forward error over its bound, worst at x = " << x[at_y];
  EXPECT_LE(worst_g, 1.0) << "GELU backward error over its bound, worst at x = " << x[at_g]
                          << ", dy = " << dy[at_g];
  // Elements outside [offset, offset + n) stay poisoned: nothing written out of bounds.
  for (size_t i = 0; i < offset; ++i) EXPECT_TRUE(std::isnan(y[i]));
}

TEST(CudaSmoke, GeluMatchesCpuReference) {
  SKIP_WITHOUT_GPU();
  CheckGelu(4096, 0);      // float4 path, no tail
  CheckGelu(1000003, 0);   // float4 path + 3-element tail, several blocks
  CheckGelu(1001, 1);      // misaligned: scalar path
}

// Row-major reference in double.
std::vector<double> GemmRef(bool ta, bool tb, int M, int N, int K, const std::vector<float>& A,
                            const std::vector<float>& B, std::vector<double>* abs_sum) {
  std::vector<double> C(static_cast<size_t>(M) * N, 0.0);
  abs_sum->assign(C.size(), 0.0);
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j)
      for (int k = 0; k < K; ++k) {
        const double a = ta ? A[static_cast<size_t>(k) * M + i] : A[static_cast<size_t>(i) * K + k];
        const double b = tb ? B[static_cast<size_t>(j) * K + k] : B[static_cast<size_t>(k) * N + j];
        C[static_cast<size_t>(i) * N + j] += a * b;
        (*abs_sum)[static_cast<size_t>(i) * N + j] += std::fabs(a * b);
      }
  return C;
}

std::vector<float> RandomVector(size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = u(gen);
  return v;
}

// Relative error of a GEMM element measured against sum_k |a_ik b_kj| (the scale rounding
// errors live on; a plain |ref| blows up where the sum cancels to near zero).
TEST(CudaSmoke, CublasSgemmRowMajorMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const int M = 37, N = 53, K = 64;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      SCOPED_TRACE("trans_a=" + std::to_string(ta) + " trans_b=" + std::to_string(tb));
      const auto A = RandomVector(static_cast<size_t>(M) * K, 1 + ta);
      const auto B = RandomVector(static_cast<size_t>(K) * N, 3 + tb);
      std::vector<double> scale;
      const auto ref = GemmRef(ta, tb, M, N, K, A, B, &scale);
      DeviceBuffer dA(A.size()), dB(B.size()), dC(static_cast<size_t>(M) * N);
      dA.Upload(A);
      dB.Upload(B);
      dC.Poison();  // beta = 0 must overwrite, NaN included
      CudaSgemm(ta, tb, M, N, K, 1.f, dA.p, ta ? M : K, dB.p, tb ? K : N, 0.f, dC.p, N);
      const auto C = dC.Download();
      double worst = 0;
      for (size_t i = 0; i < C.size(); ++i) {
        ASSERT_FALSE(std::isnan(C[i])) << "element " << i << " not written";
        worst = std::max(worst, std::fabs(C[i] - ref[i]) / std::max(scale[i], 1e-30));
      }
      EXPECT_LT(worst, 1e-5);
    }
}

TEST(CudaSmoke, CublasSgemmStridedBatchedMatchesCpu) {
  SKIP_WITHOUT_GPU();
  // Expert-GEMM shape: E experts, each [C, D] x [D, H] -> [C, H], alpha and beta both exercised.
  const int E = 4, M = 24, K = 32, N = 48;
  const auto A = RandomVector(static_cast<size_t>(E) * M * K, 11);
  const auto B = RandomVector(static_cast<size_t>(E) * K * N, 12);
  const auto C0 = RandomVector(static_cast<size_t>(E) * M * N, 13);
  const float alpha = 0.5f, beta = 2.f;
  DeviceBuffer dA(A.size()), dB(B.size()), dC(C0.size());
  dA.Upload(A);
  dB.Upload(B);
  dC.Upload(C0);
  CudaSgemmStridedBatched(false, false, M, N, K, alpha, dA.p, K, static_cast<int64_t>(M) * K, dB.p,
                          N, static_cast<int64_t>(K) * N, beta, dC.p, N,
                          static_cast<int64_t>(M) * N, E);
  const auto C = dC.Download();
  double worst = 0;
  for (int e = 0; e < E; ++e) {
    std::vector<float> Ae(A.begin() + static_cast<size_t>(e) * M * K,
                          A.begin() + static_cast<size_t>(e + 1) * M * K);
    std::vector<float> Be(B.begin() + static_cast<size_t>(e) * K * N,
                          B.begin() + static_cast<size_t>(e + 1) * K * N);
    std::vector<double> scale;
    const auto ref = GemmRef(false, false, M, N, K, Ae, Be, &scale);
    for (int i = 0; i < M * N; ++i) {
      const size_t at = static_cast<size_t>(e) * M * N + i;
      const double want = alpha * ref[i] + beta * static_cast<double>(C0[at]);
      const double s = alpha * scale[i] + std::fabs(beta * C0[at]);
      ASSERT_FALSE(std::isnan(C[at]));
      worst = std::max(worst, std::fabs(C[at] - want) / std::max(s, 1e-30));
    }
  }
  EXPECT_LT(worst, 1e-5);
}

TEST(CudaSmoke, DeviceMemoryRoundTrip) {
  SKIP_WITHOUT_GPU();
  ASSERT_TRUE(BackendAvailable(Device::kCUDA));
  const Backend& be = BackendFor(Device::kCUDA);
  const size_t n = 1000;
  float* d = static_cast<float*>(be.Allocate(n * sizeof(float)));
  float* d2 = static_cast<float*>(be.Allocate(n * sizeof(float)));
  be.Fill(d, n, 3.5f);
  std::vector<float> host(n, 0.f);
  be.Copy(host.data(), Device::kCPU, d, Device::kCUDA, n * sizeof(float));
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(host[i], 3.5f) << i;
  for (size_t i = 0; i < n; ++i) host[i] = static_cast<float>(i);
  be.Copy(d, Device::kCUDA, host.data(), Device::kCPU, n * sizeof(float));
  be.Copy(d2, Device::kCUDA, d, Device::kCUDA, n * sizeof(float));
  std::vector<float> back(n, -1.f);
  be.Copy(back.data(), Device::kCPU, d2, Device::kCUDA, n * sizeof(float));
  EXPECT_EQ(back, host);
  be.Free(d);
  be.Free(d2);
}

TEST(CudaSmoke, NcclVersion) {
  const std::string v = NcclVersionString();
  std::printf("%s\n", v.c_str());
  EXPECT_EQ(v.rfind("NCCL ", 0), 0u) << v;
  EXPECT_EQ(v.find("unavailable"), std::string::npos) << v;
}

}  // namespace
}  // namespace moe
