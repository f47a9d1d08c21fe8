// GPU tests of the dense-layer kernels (core/kernels/cuda/dense_kernels.h), the AdamW kernel
// (adamw_kernels.h) and the stream ordering helper, each against the CPU code it
// mirrors: LayerNormForward/Backward and SoftmaxForwardRows/BackwardRows (core/kernels/cpu), the
// SoftmaxCrossEntropy and MeanPoolTokens layers, Linear's bias loops, PatchEmbed's patch loops
// (copied below: they are private) and AdamW::Step.
//
// Inputs are seeded random; every device array sits in a buffer padded with NaN on both sides
// (a nonzero offset also misaligns it, forcing the scalar paths): outputs are poisoned, so an
// element left unwritten fails, a write outside the array shows in the guards, and an
// out-of-bounds read brings a NaN into the result. Float results must agree to a relative error
// below 1e-5, measured against the scale the rounding errors live on (the sum of magnitudes of
// the terms) where a result is a sum that can cancel; copies and integer results exactly.
// Without a GPU every test reports SKIPPED.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/kernels/cpu/layer_norm.h"
#include "core/kernels/cpu/softmax.h"
#include "core/kernels/cuda/adamw_kernels.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/dense_kernels.h"
#include "core/kernels/cuda/stream.h"
#include "core/optim/adamw.h"
#include "core/parameter.h"
#include "core/tensor.h"
#include "models/layers/mean_pool.h"
#include "models/layers/softmax_cross_entropy.h"
#include "tests/gpu/gpu_test_util.h"

namespace moe {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr double kTol = 1e-5;
constexpr size_t kGuard = 4;  // NaN floats after every array

std::vector<float> Random(size_t n, unsigned seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = u(gen);
  return v;
}

// n floats at buf.p + offset, NaN in the `offset` floats before and kGuard after.
struct Placed {
  Placed(size_t n, size_t offset) : buf(offset + n + kGuard), off(offset), n(n) { buf.Poison(); }
  Placed(const std::vector<float>& v, size_t offset) : Placed(v.size(), offset) { Upload(v); }
  float* p() { return buf.p + off; }
  void Upload(const std::vector<float>& v) {
    std::vector<float> all(buf.n, kNaN);
    std::copy(v.begin(), v.end(), all.begin() + off);
    buf.Upload(all);
  }
  // The array; fails the test if a guard was written.
  std::vector<float> Download() const {
    const std::vector<float> all = buf.Download();
    for (size_t i = 0; i < off; ++i)
      EXPECT_TRUE(std::isnan(all[i])) << "write before the array at -" << off - i;
    for (size_t i = off + n; i < all.size(); ++i)
      EXPECT_TRUE(std::isnan(all[i])) << "write past the array at +" << i - off - n;
    return std::vector<float>(all.begin() + off, all.begin() + off + n);
  }
  DeviceBuffer buf;
  size_t off, n;
};

// Device ints, poisoned with bytes 0x7f.
struct DeviceInts {
  explicit DeviceInts(size_t n) : n(n) {
    CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p), (n ? n : 1) * sizeof(int)));
    CUDA_CHECK(cudaMemset(p, 0x7f, (n ? n : 1) * sizeof(int)));
  }
  explicit DeviceInts(const std::vector<int>& v) : DeviceInts(v.size()) {
    CUDA_CHECK(cudaMemcpy(p, v.data(), n * sizeof(int), cudaMemcpyHostToDevice));
  }
  DeviceInts(const DeviceInts&) = delete;
  DeviceInts& operator=(const DeviceInts&) = delete;
  ~DeviceInts() { cudaFree(p); }
  std::vector<int> Download() const {
    std::vector<int> v(n);
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(v.data(), p, n * sizeof(int), cudaMemcpyDeviceToHost));
    return v;
  }
  int* p = nullptr;
  size_t n;
};

// Worst |got - ref| / scale over an array; NaN (unwritten) is a failure of its own.
class ErrorTracker {
 public:
  explicit ErrorTracker(std::string what) : what_(std::move(what)) {}
  void Add(size_t i, double got, double ref, double scale) {
    if (std::isnan(got)) {
      ++unwritten_;
      if (first_nan_ == SIZE_MAX) first_nan_ = i;
      return;
    }
    const double e = std::fabs(got - ref) / std::max(scale, 1e-30);
    if (e > worst_) {
      worst_ = e;
      at_ = i;
      got_ = got;
      ref_ = ref;
    }
  }
  void Expect(double tol = kTol) const {
    EXPECT_EQ(unwritten_, 0u) << what_ << ": " << unwritten_ << " elements NaN (unwritten?), first "
                              << first_nan_;
    EXPECT_LT(worst_, tol) << what_ << ": worst relative error at " << at_ << ": got " << got_
                           << ", want " << ref_;
  }

 private:
  std::string what_;
  double worst_ = 0, got_ = 0, ref_ = 0;
  size_t at_ = 0, unwritten_ = 0, first_nan_ = SIZE_MAX;
};

// Case("rows", 3, "dim", 5) -> "rows=3 dim=5 ", for SCOPED_TRACE.
void AppendCase(std::string*) {}
template <typename V, typename... Rest>
void AppendCase(std::string* s, const char* key, V value, Rest... rest) {
  *s += std::string(key) + "=" + std::to_string(value) + " ";
  AppendCase(s, rest...);
}
template <typename... Args>
std::string Case(Args... args) {
  std::string s;
  AppendCase(&s, args...);
  return s;
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

void CheckLayerNorm(int64_t rows, int64_t dim, size_t off, bool alias, unsigned seed) {
  SCOPED_TRACE(Case("rows", rows, "dim", dim, "offset", off, "alias", alias));
  const size_t n = static_cast<size_t>(rows * dim);
  std::vector<float> x = Random(n, seed, -2.f, 3.f);  // nonzero mean
  for (size_t i = 0; i < n; i += 7) x[i] *= 10.f;        // and some spread
  const auto gamma = Random(dim, seed + 1, 0.5f, 1.5f), beta = Random(dim, seed + 2);
  const float eps = 1e-6f;
  std::vector<float> y(n), mean(rows), rstd(rows);
  LayerNormForward(x.data(), gamma.data(), beta.data(), rows, dim, eps, y.data(), mean.data(),
                   rstd.data());

  Placed dx_in(x, off), dgamma(gamma, off), dbeta(beta, off), dy_out(n, off), dmean(rows, off),
      drstd(rows, off);
  float* out = alias ? dx_in.p() : dy_out.p();
  LayerNormForwardCuda(dx_in.p(), dgamma.p(), dbeta.p(), rows, dim, eps, out, dmean.p(),
                       drstd.p());
  const auto gy = alias ? dx_in.Download() : dy_out.Download();
  const auto gmean = dmean.Download(), grstd = drstd.Download();
  ErrorTracker ey("LayerNorm y"), em("LayerNorm mean"), er("LayerNorm rstd");
  for (int64_t r = 0; r < rows; ++r) {
    double abs_sum = 0;
    for (int64_t j = 0; j < dim; ++j) abs_sum += std::fabs(x[r * dim + j]);
    em.Add(r, gmean[r], mean[r], abs_sum / dim);
    er.Add(r, grstd[r], rstd[r], std::fabs(rstd[r]));
    for (int64_t j = 0; j < dim; ++j) {
      const size_t i = r * dim + j;
      const double h = (x[i] - static_cast<double>(mean[r])) * rstd[r];
      ey.Add(i, gy[i], y[i], std::fabs(h * gamma[j]) + std::fabs(beta[j]));
    }
  }
  ey.Expect();
  em.Expect();
  er.Expect();

  // Backward from the CPU's statistics, accumulating onto nonzero gradients.
  const auto dy = Random(n, seed + 3);
  const auto dgamma0 = Random(dim, seed + 4), dbeta0 = Random(dim, seed + 5);
  std::vector<float> dxr(n), dgr = dgamma0, dbr = dbeta0;
  LayerNormBackward(x.data(), dy.data(), gamma.data(), mean.data(), rstd.data(), rows, dim,
                    dxr.data(), dgr.data(), dbr.data());
  dx_in.Upload(x);
  dmean.Upload(mean);
  drstd.Upload(rstd);
  Placed ddy(dy, off), ddx(n, off), ddg(dgamma0, off), ddb(dbeta0, off);
  float* dx_out = alias ? ddy.p() : ddx.p();
  LayerNormBackwardCuda(dx_in.p(), ddy.p(), dgamma.p(), dmean.p(), drstd.p(), rows, dim, dx_out,
                        ddg.p(), ddb.p());
  const auto gdx = alias ? ddy.Download() : ddx.Download();
  const auto gdg = ddg.Download(), gdb = ddb.Download();
  ErrorTracker edx("LayerNorm dx"), edg("LayerNorm dgamma"), edb("LayerNorm dbeta");
  std::vector<double> sg(dim), sb(dim);
  for (int64_t j = 0; j < dim; ++j) {
    sg[j] = std::fabs(dgamma0[j]);
    sb[j] = std::fabs(dbeta0[j]);
  }
  for (int64_t r = 0; r < rows; ++r) {
    double mag_g = 0, mag_gx = 0;
    for (int64_t j = 0; j < dim; ++j) {
      const size_t i = r * dim + j;
      const double h = (x[i] - static_cast<double>(mean[r])) * rstd[r];
      mag_g += std::fabs(dy[i] * gamma[j]);
      mag_gx += std::fabs(dy[i] * gamma[j] * h);
      sg[j] += std::fabs(dy[i] * h);
      sb[j] += std::fabs(dy[i]);
    }
    for (int64_t j = 0; j < dim; ++j) {
      const size_t i = r * dim + j;
      const double h = (x[i] - static_cast<double>(mean[r])) * rstd[r];
      const double scale =
          rstd[r] * (std::fabs(dy[i] * gamma[j]) + mag_g / dim + std::fabs(h) * mag_gx / dim);
      edx.Add(i, gdx[i], dxr[i], scale);
    }
  }
  for (int64_t j = 0; j < dim; ++j) {
    edg.Add(j, gdg[j], dgr[j], sg[j]);
    edb.Add(j, gdb[j], dbr[j], sb[j]);
  }
  edx.Expect();
  edg.Expect();
  edb.Expect();
}

TEST(DenseKernels, LayerNormMatchesCpu) {
  SKIP_WITHOUT_GPU();
  CheckLayerNorm(64, 256, 0, false, 1);    // float4 path
  CheckLayerNorm(33, 193, 0, false, 2);    // dim not a multiple of 4
  CheckLayerNorm(1, 37, 0, false, 3);      // one row
  CheckLayerNorm(1, 1, 0, false, 4);       // one element
  CheckLayerNorm(17, 768, 1, false, 5);    // misaligned: scalar path
  CheckLayerNorm(8, 4100, 0, true, 6);     // long rows, y aliasing x, dx aliasing dy
  CheckLayerNorm(3000, 64, 0, false, 7);   // many rows: hundreds of column-reduction chunks
  CheckLayerNorm(2, 5000, 3, true, 8);     // one chunk, misaligned, aliased
}

// ---------------------------------------------------------------------------------------------
// Row softmax

void CheckSoftmax(int64_t rows, int64_t cols, size_t off, bool alias, unsigned seed) {
  SCOPED_TRACE(Case("rows", rows, "cols", cols, "offset", off, "alias", alias));
  const size_t n = static_cast<size_t>(rows * cols);
  const auto x = Random(n, seed, -6.f, 6.f);
  std::vector<float> y(n);
  SoftmaxForwardRows(x.data(), rows, cols, y.data());
  Placed dxin(x, off), dyout(n, off);
  float* out = alias ? dxin.p() : dyout.p();
  SoftmaxForwardRowsCuda(dxin.p(), rows, cols, out);
  const auto gy = alias ? dxin.Download() : dyout.Download();
  ErrorTracker ey("softmax y");
  for (size_t i = 0; i < n; ++i) ey.Add(i, gy[i], y[i], std::fabs(y[i]));
  ey.Expect();

  const auto dy = Random(n, seed + 1);
  std::vector<float> dx(n);
  SoftmaxBackwardRows(y.data(), dy.data(), rows, cols, dx.data());
  Placed dyprob(y, off), ddy(dy, off), ddx(n, off);
  float* dxo = alias ? ddy.p() : ddx.p();
  SoftmaxBackwardRowsCuda(dyprob.p(), ddy.p(), rows, cols, dxo);
  const auto gdx = alias ? ddy.Download() : ddx.Download();
  ErrorTracker edx("softmax dx");
  for (int64_t r = 0; r < rows; ++r) {
    double mag = 0;
    for (int64_t j = 0; j < cols; ++j) mag += std::fabs(static_cast<double>(y[r * cols + j]) * dy[r * cols + j]);
    for (int64_t j = 0; j < cols; ++j) {
      const size_t i = r * cols + j;
      edx.Add(i, gdx[i], dx[i], std::fabs(y[i]) * (std::fabs(dy[i]) + mag));
    }
  }
  edx.Expect();
}

TEST(DenseKernels, SoftmaxRowsMatchesCpu) {
  SKIP_WITHOUT_GPU();
  unsigned seed = 100;
  // Every register-path instantiation, float4 (offset 0, cols % 4 == 0) and scalar.
  for (int64_t cols : {1, 3, 4, 31, 32, 33, 64, 100, 128, 196, 257, 500, 512, 640, 1000, 1024})
    for (size_t off : {size_t(0), size_t(1)}) CheckSoftmax(37, cols, off, false, seed++);
  CheckSoftmax(1, 197, 0, false, seed++);     // one row
  CheckSoftmax(2000, 196, 0, true, seed++);   // attention-like, in place
  CheckSoftmax(5, 1500, 0, false, seed++);    // > 1024: three-pass path
  CheckSoftmax(3, 4097, 1, true, seed++);     // > 1024, misaligned, in place
}

// ---------------------------------------------------------------------------------------------
// Bias add, column sums, residual add

TEST(DenseKernels, BiasAddRowsMatchesCpu) {
  SKIP_WITHOUT_GPU();
  struct C { int64_t rows, cols; size_t off; };
  unsigned seed = 200;
  for (const C c : {C{5, 64, 0}, C{7, 37, 0}, C{1, 3, 0}, C{9, 64, 1}, C{4, 196 * 8, 0},
                    C{1000, 1, 0}}) {
    SCOPED_TRACE(Case("rows", c.rows, "cols", c.cols, "offset", c.off));
    const auto y0 = Random(c.rows * c.cols, seed++), b = Random(c.cols, seed++);
    Placed dy(y0, c.off), db(b, c.off);
    BiasAddRowsCuda(dy.p(), db.p(), c.rows, c.cols);
    const auto got = dy.Download();
    ErrorTracker e("bias add");
    for (int64_t r = 0; r < c.rows; ++r)
      for (int64_t j = 0; j < c.cols; ++j) {
        const size_t i = r * c.cols + j;
        e.Add(i, got[i], y0[i] + b[j], std::fabs(y0[i]) + std::fabs(b[j]));
      }
    e.Expect();
  }
}

TEST(DenseKernels, ColumnSumAccumulateMatchesLinearBiasGrad) {
  SKIP_WITHOUT_GPU();
  struct C { int64_t rows, cols; size_t off; };
  unsigned seed = 300;
  for (const C c : {C{1, 10, 0}, C{100000, 3, 0}, C{513, 77, 1}, C{256, 196 * 64, 0},
                    C{7, 1, 0}}) {
    SCOPED_TRACE(Case("rows", c.rows, "cols", c.cols, "offset", c.off));
    const auto dy = Random(c.rows * c.cols, seed++), db0 = Random(c.cols, seed++);
    // Linear::Backward's bias loop.
    std::vector<double> acc(c.cols, 0.0), mag(c.cols, 0.0);
    for (int64_t r = 0; r < c.rows; ++r)
      for (int64_t j = 0; j < c.cols; ++j) {
        acc[j] += dy[r * c.cols + j];
        mag[j] += std::fabs(dy[r * c.cols + j]);
      }
    Placed ddy(dy, c.off), ddb(db0, c.off);
    ColumnSumAccumulateCuda(ddy.p(), c.rows, c.cols, ddb.p());
    const auto got = ddb.Download();
    ErrorTracker e("column sum");
    for (int64_t j = 0; j < c.cols; ++j)
      e.Add(j, got[j], db0[j] + static_cast<float>(acc[j]), std::fabs(db0[j]) + mag[j]);
    e.Expect();
    // Deterministic: a second run from the same start gives the same bits.
    ddb.Upload(db0);
    ColumnSumAccumulateCuda(ddy.p(), c.rows, c.cols, ddb.p());
    EXPECT_EQ(ddb.Download(), got) << "column sums are not reproducible";
  }
}

TEST(DenseKernels, AddInPlaceMatchesCpu) {
  SKIP_WITHOUT_GPU();
  unsigned seed = 400;
  for (const auto& c : std::vector<std::pair<int64_t, size_t>>{
           {1, 0}, {3, 0}, {4, 0}, {1001, 0}, {1000003, 0}, {1001, 1}, {5, 2}}) {
    SCOPED_TRACE(Case("n", c.first, "offset", c.second));
    const auto y0 = Random(c.first, seed++), x = Random(c.first, seed++);
    Placed dy(y0, c.second), dx(x, c.second);
    AddInPlaceCuda(dy.p(), dx.p(), c.first);
    const auto got = dy.Download();
    ErrorTracker e("add in place");
    for (int64_t i = 0; i < c.first; ++i)
      e.Add(i, got[i], y0[i] + x[i], std::fabs(y0[i]) + std::fabs(x[i]));
    e.Expect();
    // x == y doubles it.
    AddInPlaceCuda(dx.p(), dx.p(), c.first);
    const auto twice = dx.Download();
    for (int64_t i = 0; i < c.first; ++i) ASSERT_EQ(twice[i], x[i] + x[i]) << i;
  }
}

// ---------------------------------------------------------------------------------------------
// Softmax cross-entropy vs the SoftmaxCrossEntropy layer

void CheckCrossEntropy(int64_t B, int64_t C, size_t off, bool alias, unsigned seed) {
  SCOPED_TRACE(Case("B", B, "C", C, "offset", off, "alias", alias));
  std::vector<float> logits = Random(B * C, seed, -8.f, 8.f);
  std::mt19937 gen(seed + 1);
  std::vector<int> labels(B);
  for (auto& l : labels) l = static_cast<int>(gen() % C);
  if (C >= 3) {  // a tie for the maximum in row 0: the lower index must win
    logits[1] = 20.f;
    logits[2] = 20.f;
  }
  const float scale = 1.f / 96.f;
  SoftmaxCrossEntropy ce;
  ce.Forward(Tensor::FromVector({B, C}, logits), labels, scale);
  const std::vector<float> dref = ce.Backward().ToVector();

  Placed dl(logits, off), dd(B * C, off), dloss(B, off);
  DeviceInts dlab(labels), dpred(B);
  float* dout = alias ? dl.p() : dd.p();
  SoftmaxCrossEntropyForwardCuda(dl.p(), dlab.p, B, C, scale, 0.f, dloss.p(), dpred.p, dout);
  const auto gd = alias ? dl.Download() : dd.Download();
  const auto gloss = dloss.Download();
  const auto gpred = dpred.Download();
  EXPECT_EQ(gpred, ce.predictions());
  ErrorTracker el("CE row loss"), eg("CE dlogits");
  for (int64_t r = 0; r < B; ++r) {
    const double ll = logits[r * C + labels[r]];
    el.Add(r, gloss[r], ce.row_losses()[r], std::fabs(ce.row_losses()[r]) + 2 * std::fabs(ll));
    for (int64_t j = 0; j < C; ++j) {
      const size_t i = r * C + j;
      const double s = std::fabs(dref[i]) + (j == labels[r] ? scale : 0.f);
      eg.Add(i, gd[i], dref[i], s);
    }
  }
  el.Expect();
  eg.Expect();
}

TEST(DenseKernels, SoftmaxCrossEntropyMatchesLayer) {
  SKIP_WITHOUT_GPU();
  CheckCrossEntropy(1, 1, 0, false, 500);
  CheckCrossEntropy(5, 10, 0, false, 501);
  CheckCrossEntropy(64, 1000, 0, false, 502);
  CheckCrossEntropy(3, 33, 1, false, 503);
  CheckCrossEntropy(2, 5000, 0, true, 504);
  CheckCrossEntropy(300, 100, 0, true, 505);
}

TEST(DenseKernels, SoftmaxCrossEntropyOptionalOutputs) {
  SKIP_WITHOUT_GPU();
  const int64_t B = 4, C = 7;
  const auto logits = Random(B * C, 510);
  const std::vector<int> labels = {0, 6, 3, 3};
  SoftmaxCrossEntropy ce;
  ce.Forward(Tensor::FromVector({B, C}, logits), labels, 0.5f);
  const auto dref = ce.Backward().ToVector();
  Placed dl(logits, 0), dd(B * C, 0);
  DeviceInts dlab(labels);
  SoftmaxCrossEntropyForwardCuda(dl.p(), dlab.p, B, C, 0.5f, 0.f, nullptr, nullptr, dd.p());
  const auto gd = dd.Download();
  ErrorTracker e("CE dlogits without loss/pred");
  for (size_t i = 0; i < gd.size(); ++i) e.Add(i, gd[i], dref[i], std::fabs(dref[i]) + 0.5);
  e.Expect();
}

// ---------------------------------------------------------------------------------------------
// Mean pooling vs the MeanPoolTokens layer

TEST(DenseKernels, MeanPoolTokensMatchesLayer) {
  SKIP_WITHOUT_GPU();
  struct C { int64_t B, T, D; size_t off; };
  unsigned seed = 600;
  for (const C c : {C{2, 196, 64, 0}, C{3, 5, 37, 0}, C{1, 1, 1, 0}, C{4, 7, 64, 1},
                    C{1, 3, 4, 0}}) {
    SCOPED_TRACE(Case("B", c.B, "T", c.T, "D", c.D, "offset", c.off));
    const auto x = Random(c.B * c.T * c.D, seed++, -3.f, 3.f);
    MeanPoolTokens pool(c.T);
    const auto yref = pool.Forward(Tensor::FromVector({c.B * c.T, c.D}, x)).ToVector();
    const auto dy = Random(c.B * c.D, seed++);
    const auto dxref = pool.Backward(Tensor::FromVector({c.B, c.D}, dy)).ToVector();

    Placed dx_in(x, c.off), dy_out(c.B * c.D, c.off);
    // Bit for bit, both ways: the same double additions in the same order and one division
    // (forward), one float product (backward). MoeLinearPair's image-mean router relies on it:
    // its host and device twins must compute identical gates from these means.
    MeanPoolTokensForwardCuda(dx_in.p(), c.B, c.T, c.D, dy_out.p());
    const auto gy = dy_out.Download();
    int64_t y_differ = 0;
    for (size_t i = 0; i < gy.size(); ++i) y_differ += std::memcmp(&gy[i], &yref[i], 4) != 0;
    EXPECT_EQ(y_differ, 0) << "mean pool y: elements not bit-equal to MeanPoolTokens";

    Placed ddy(dy, c.off), ddx(c.B * c.T * c.D, c.off);
    MeanPoolTokensBackwardCuda(ddy.p(), c.B, c.T, c.D, ddx.p());
    const auto gdx = ddx.Download();
    int64_t dx_differ = 0;
    for (size_t i = 0; i < gdx.size(); ++i) dx_differ += std::memcmp(&gdx[i], &dxref[i], 4) != 0;
    EXPECT_EQ(dx_differ, 0) << "mean pool dx: elements not bit-equal to MeanPoolTokens";
  }
}

// ---------------------------------------------------------------------------------------------
// Patches: PatchEmbed::Im2Patch / Patch2Im, copied (they are private to the layer).

void Im2PatchRef(const float* images, int64_t batch, int64_t C, int64_t S, int64_t p,
                 float* patches) {
  const int64_t grid = S / p, tokens = grid * grid, patch_dim = C * p * p;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t py = 0; py < grid; ++py)
      for (int64_t px = 0; px < grid; ++px) {
        float* out = patches + ((b * tokens) + py * grid + px) * patch_dim;
        for (int64_t c = 0; c < C; ++c)
          for (int64_t i = 0; i < p; ++i) {
            const float* row = images + b * C * S * S + c * S * S + (py * p + i) * S + px * p;
            std::copy(row, row + p, out + (c * p + i) * p);
          }
      }
}

void Patch2ImRef(const float* patches, int64_t batch, int64_t C, int64_t S, int64_t p,
                 float* images) {
  const int64_t grid = S / p, tokens = grid * grid, patch_dim = C * p * p;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t py = 0; py < grid; ++py)
      for (int64_t px = 0; px < grid; ++px) {
        const float* in = patches + ((b * tokens) + py * grid + px) * patch_dim;
        for (int64_t c = 0; c < C; ++c)
          for (int64_t i = 0; i < p; ++i) {
            float* row = images + b * C * S * S + c * S * S + (py * p + i) * S + px * p;
            std::copy(in + (c * p + i) * p, in + (c * p + i + 1) * p, row);
          }
      }
}

TEST(DenseKernels, PatchifyAndUnpatchifyMatchPatchEmbed) {
  SKIP_WITHOUT_GPU();
  struct C { int64_t B, C, S, p; size_t off; };
  unsigned seed = 700;
  for (const C c : {C{2, 3, 32, 4, 0}, C{1, 1, 6, 3, 0}, C{2, 3, 28, 7, 1}, C{1, 2, 5, 5, 0},
                    C{1, 1, 4, 1, 0}, C{3, 3, 224, 16, 0}}) {
    SCOPED_TRACE(Case("B", c.B, "C", c.C, "S", c.S, "p", c.p, "offset", c.off));
    const size_t n = static_cast<size_t>(c.B * c.C * c.S * c.S);
    const auto images = Random(n, seed++);
    std::vector<float> pref(n), iref(n);
    Im2PatchRef(images.data(), c.B, c.C, c.S, c.p, pref.data());
    Placed dimg(images, c.off), dpat(n, c.off);
    PatchifyCuda(dimg.p(), c.B, c.C, c.S, c.p, dpat.p());
    EXPECT_EQ(dpat.Download(), pref) << "patchify";
    // Unpatchify of an independent patch array (not just the round trip).
    const auto patches = Random(n, seed++);
    Patch2ImRef(patches.data(), c.B, c.C, c.S, c.p, iref.data());
    Placed dp2(patches, c.off), dimg2(n, c.off);
    UnpatchifyCuda(dp2.p(), c.B, c.C, c.S, c.p, dimg2.p());
    EXPECT_EQ(dimg2.Download(), iref) << "unpatchify";
  }
}

// ---------------------------------------------------------------------------------------------
// AdamW vs AdamW::Step, several steps with a changing learning rate

TEST(DenseKernels, AdamWStepMatchesCpuOptimizer) {
  SKIP_WITHOUT_GPU();
  AdamWConfig cfg;
  cfg.weight_decay = 0.05f;
  AdamW opt(cfg);
  struct P { const char* name; int64_t n; size_t off; };
  const std::vector<P> specs = {{"blk.mlp.w", 1001, 0},  // decayed, float4 + tail
                                {"blk.ln1.gamma", 64, 0},  // not decayed
                                {"head.b", 3, 0},          // not decayed, shorter than a float4
                                {"blk.attn.w", 37, 1}};    // decayed, misaligned: scalar path
  std::vector<Parameter> params(specs.size());
  std::vector<Parameter*> ptrs;
  std::vector<std::unique_ptr<Placed>> dw, dg, dm, dv;
  unsigned seed = 800;
  for (size_t k = 0; k < specs.size(); ++k) {
    params[k].name = specs[k].name;
    const auto w0 = Random(specs[k].n, seed++);
    params[k].value = Tensor::FromVector({specs[k].n}, w0);
    params[k].grad = Tensor::Zeros({specs[k].n});
    ptrs.push_back(&params[k]);
    dw.push_back(std::make_unique<Placed>(w0, specs[k].off));
    dg.push_back(std::make_unique<Placed>(specs[k].n, specs[k].off));
    dm.push_back(std::make_unique<Placed>(std::vector<float>(specs[k].n, 0.f), specs[k].off));
    dv.push_back(std::make_unique<Placed>(std::vector<float>(specs[k].n, 0.f), specs[k].off));
  }
  for (int step = 0; step < 6; ++step) {
    const float lr = 1e-3f * static_cast<float>(step + 1) / 4.f;
    for (size_t k = 0; k < specs.size(); ++k) {
      const auto g = Random(specs[k].n, seed++, -2.f, 2.f);
      std::copy(g.begin(), g.end(), params[k].grad.data());
      dg[k]->Upload(g);
    }
    opt.Step(ptrs, lr);
    for (size_t k = 0; k < specs.size(); ++k) {
      const float wd = DecayApplies(specs[k].name) ? cfg.weight_decay : 0.f;
      AdamWStepCuda(dw[k]->p(), dg[k]->p(), dm[k]->p(), dv[k]->p(), specs[k].n, lr, cfg.beta1,
                    cfg.beta2, cfg.eps, wd, opt.step_count());
    }
  }
  for (size_t k = 0; k < specs.size(); ++k) {
    SCOPED_TRACE(specs[k].name);
    const AdamWMoments* mom = opt.FindMoments(&params[k]);
    ASSERT_NE(mom, nullptr);
    const auto gw = dw[k]->Download(), gm = dm[k]->Download(), gv = dv[k]->Download();
    ErrorTracker ew("AdamW param"), em("AdamW m"), ev("AdamW v");
    size_t bit_equal = 0;
    for (int64_t i = 0; i < specs[k].n; ++i) {
      const float w = params[k].value.data()[i];
      ew.Add(i, gw[i], w, std::max(std::fabs(w), 1e-6f));
      em.Add(i, gm[i], mom->m[i], std::max(std::fabs(mom->m[i]), 1e-6f));
      ev.Add(i, gv[i], mom->v[i], std::max(std::fabs(mom->v[i]), 1e-12f));
      bit_equal += gw[i] == w && gm[i] == mom->m[i] && gv[i] == mom->v[i];
    }
    ew.Expect();
    em.Expect();
    ev.Expect();
    // Same float operations in the same order: expected bit-identical on a non-FMA host build.
    std::printf("AdamW %s: %zu of %lld elements bit-identical to the CPU\n", specs[k].name,
                bit_equal, static_cast<long long>(specs[k].n));
  }
}

// ---------------------------------------------------------------------------------------------
// Streams

TEST(DenseKernels, OrderAfterOrdersTwoStreams) {
  SKIP_WITHOUT_GPU();
  cudaStream_t producer = nullptr, waiter = nullptr;
  CUDA_CHECK(cudaStreamCreate(&producer));
  CUDA_CHECK(cudaStreamCreate(&waiter));
  const int64_t n = 1 << 20;
  DeviceBuffer y(n), ones(n), z(n);
  y.Upload(std::vector<float>(n, 0.f));
  ones.Upload(std::vector<float>(n, 1.f));
  z.Upload(std::vector<float>(n, 0.f));
  for (int round = 0; round < 3; ++round) {
    // The producer is held back on the host for 50 ms: without the ordering, the waiter's read
    // of y would run first and see the old value.
    CUDA_CHECK(cudaLaunchHostFunc(
        producer, [](void*) { std::this_thread::sleep_for(std::chrono::milliseconds(50)); },
        nullptr));
    AddInPlaceCuda(y.p, ones.p, n, producer);  // y = round + 1
    OrderAfter(waiter, producer);
    AddInPlaceCuda(z.p, y.p, n, waiter);  // z += y
  }
  CUDA_CHECK(cudaStreamSynchronize(waiter));
  const auto got = z.Download();
  for (int64_t i = 0; i < n; i += 4099) ASSERT_EQ(got[i], 1.f + 2.f + 3.f) << i;
  // Many calls reuse pooled events (none leak; a leak would show as growth in a profiler).
  for (int i = 0; i < 10000; ++i) OrderAfter(i % 2 ? waiter : producer, i % 2 ? producer : waiter);
  OrderAfter(waiter, waiter);  // no-op
  CUDA_CHECK(cudaDeviceSynchronize());
  CUDA_CHECK(cudaStreamDestroy(producer));
  CUDA_CHECK(cudaStreamDestroy(waiter));
  ReleaseOrderEvents();
}

// Tensor memory is stream-ordered on the legacy stream (device_memory_cuda.cu). Releasing a
// Tensor must neither wait for the device (cudaFree did: code had come to rely on that hidden
// synchronisation, e.g. the expert bank freeing scratch its queued kernels still used) nor let
// its block be reused before the work that uses it is done. Work on another stream follows the
// contract: the legacy stream is ordered after it (OrderAfter) before the release.
TEST(DenseKernels, TensorReleaseIsStreamOrderedAndDoesNotWait) {
  SKIP_WITHOUT_GPU();
  cudaStream_t s = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));  // no implicit ordering
  const int64_t n = 1 << 20;
  Tensor ones({n}, Device::kCUDA), c({n}, Device::kCUDA);
  ones.Fill(1.f);
  c.Fill(0.f);
  OrderAfter(s, cudaStreamLegacy);  // after the allocations and fills
  // s is held back 200 ms on the host, then writes into c.
  CUDA_CHECK(cudaLaunchHostFunc(
      s, [](void*) { std::this_thread::sleep_for(std::chrono::milliseconds(200)); }, nullptr));
  AddInPlaceCuda(c.data(), ones.data(), n, s);
  OrderAfter(cudaStreamLegacy, s);
  const auto t0 = std::chrono::steady_clock::now();
  c = Tensor();  // released while the write into it is still queued
  const double release_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const cudaError_t pending = cudaStreamQuery(s);
  cudaGetLastError();  // cudaErrorNotReady is a status, not an error to carry on
  EXPECT_EQ(pending, cudaErrorNotReady) << "releasing a Tensor waited for the device ("
                                        << release_ms << " ms)";
  // A new block of the same size (likely the same memory) filled after the release: the queued
  // write must have landed before the block was reused, so every element is exactly 7.
  Tensor d({n}, Device::kCUDA);
  d.Fill(7.f);
  const std::vector<float> got = d.ToVector();
  int64_t wrong = 0;
  for (float v : got) wrong += v != 7.f;
  EXPECT_EQ(wrong, 0) << "a released block was reused before the work using it completed";
  CUDA_CHECK(cudaStreamSynchronize(s));
  CUDA_CHECK(cudaStreamDestroy(s));
}

}  // namespace
}  // namespace moe
