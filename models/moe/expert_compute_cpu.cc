// The expert bank's host arithmetic: OpenBLAS GEMMs (packed weights), bias written first and the
// GEMM accumulated into it (one pass over the output instead of two), exact-erf GELU or ReLU.
// The hidden layer's saved buffer holds the activation's derivative at the pre-activation, not
// the pre-activation: the forward evaluates the normal tail once for both GELU and its derivative
// (their exp is shared), and the backward is one product per element instead of a second
// evaluation of the tail, which cost as much as the forward's GELU (the same memory either way).
#include <algorithm>
#include <vector>

#include "core/gemm.h"
#include "core/kernels/cpu/gelu.h"
#include "models/moe/expert_compute.h"

namespace moe {

namespace {

class CpuExpertCompute : public ExpertCompute {
 public:
  Device device() const override { return Device::kCPU; }
  Tensor NewRows(int64_t rows, int64_t cols) override { return Tensor({rows, cols}); }

  void Forward(const ExpertWeights& w, const ExpertShape& s, int64_t m, const float* x,
               float* saved, float* act, float* y) override {
    const int64_t D = s.dim, H = s.hidden;
    float* pre = saved;  // overwritten with the derivative by ActivationForward
    for (int64_t i = 0; i < m; ++i) std::copy(w.b1, w.b1 + H, pre + i * H);
    SgemmPacked(false, false, m, H, D, 1.f, x, w.w1, 1.f, pre);
    ActivationForward(s, pre, act, m, H);
    for (int64_t i = 0; i < m; ++i) std::copy(w.b2, w.b2 + D, y + i * D);
    SgemmPacked(false, false, m, D, H, 1.f, act, w.w2, 1.f, y);
  }

  float* HiddenGradScratch(int64_t count) override {
    scratch_.resize(count);
    return scratch_.data();
  }

  void Backward(const ExpertWeights& w, const ExpertShape& s, int64_t m, const float* x,
                const float* saved, const float* act, const float* dy, float* dh,
                float* dx) override {
    const int64_t D = s.dim, H = s.hidden;
    // Second layer: dW2 += H^T dY, db2 += colsum(dY), dH = dY W2^T.
    SgemmPacked(true, false, H, D, m, 1.f, act, dy, 1.f, w.dw2);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < D; ++j) w.db2[j] += dy[i * D + j];
    SgemmPacked(false, true, m, H, D, 1.f, dy, w.w2, 0.f, dh);
    // In place, dH_pre = act'(H_pre) * dH, and db1 += colsum(dH_pre) in the same pass.
    ActivationBackward(s, saved, dh, m, H, w.db1);
    // First layer.
    SgemmPacked(true, false, D, H, m, 1.f, x, dh, 1.f, w.dw1);
    SgemmPacked(false, true, m, D, H, 1.f, dh, w.w1, 0.f, dx);
  }

 private:
  // act = activation(pre), and pre overwritten in place by activation'(pre). One call for the
  // whole block: GELU's bits do not depend on an element's position in the call (gelu.h), so this
  // step adds nothing to the differences between a chunk of rows and the whole.
  static void ActivationForward(const ExpertShape& s, float* pre, float* act, int64_t rows,
                                int64_t cols) {
    if (s.activation == MoeLayerOptions::Activation::kGelu) {
      GeluForwardWithDerivative(pre, act, pre, rows * cols);
      return;
    }
    for (int64_t i = 0; i < rows * cols; ++i) {
      const bool on = pre[i] > 0.f;  // NaN is off
      act[i] = on ? pre[i] : 0.f;
      pre[i] = on ? 1.f : 0.f;
    }
  }
  // d_act *= the saved derivative, in place, with d_bias += its column sums.
  static void ActivationBackward(const ExpertShape& s, const float* derivative, float* d_act,
                                 int64_t rows, int64_t cols, float* d_bias) {
    if (s.activation == MoeLayerOptions::Activation::kGelu) {
      ScaleWithColumnSums(derivative, d_act, rows, cols, d_bias);
      return;
    }
    // ReLU's derivative at exactly 0 is taken as 0 (the subgradient PyTorch and TF use). A select,
    // not a product: a zeroed entry is +0 whatever d_act held (a product keeps -0 and NaN).
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) {
        float& d = d_act[i * cols + j];
        if (!(derivative[i * cols + j] > 0.f)) d = 0.f;
        d_bias[j] += d;
      }
  }
  std::vector<float> scratch_;
};

}  // namespace

std::unique_ptr<ExpertCompute> MakeCpuExpertCompute() {
  return std::make_unique<CpuExpertCompute>();
}

}  // namespace moe
