// The expert bank's CUDA arithmetic: the same two-layer MLP (GELU or ReLU) per local expert as
// expert_compute_cpu.cc, with cuBLAS GEMMs and the CUDA GELU / ReLU / bias kernels, all enqueued
// on the stream the MoE layer set (ExpertBank::set_cuda_stream). Compiled only with the CUDA path
// (MOE_EP_HAS_CUDA); plain C++ calling the kernels of core/kernels/cuda, so it needs no nvcc.
//
// One GEMM per expert weight and expert (a loop over the E_local experts), not a strided-batched
// GEMM: each expert's W1/W2 is its own Parameter with its own allocation, so the weights have no
// common stride (a batched call would need one weight slab with per-expert views, which Tensor
// does not offer, or pointer arrays uploaded per call). Each GEMM covers every row the expert
// received (EP * groups * capacity of them), which is what keeps the GPU busy; E_local launches
// of it cost microseconds.
//
// Memory: the Tensors (input, hidden activations, outputs) are the MoE layer's kind, allocated
// through moe_cuda::NewDeviceTensor (ordered after the legacy stream, where Tensor memory is
// stream-ordered) and released only after the layer's LeaveToLegacyStream; Backward's scratch
// d(hidden) is a stream-ordered buffer on the layer's stream, released (stream-ordered) when the
// next Backward replaces it.
//
// Numerics: GEMM then bias (the CPU writes the bias first and accumulates the GEMM into it), bias
// gradients summed in double (ColumnSumAccumulateCuda; the CPU sums in float): equal to the CPU
// up to float rounding, not bit for bit.
#include <cuda_runtime_api.h>
#include <glog/logging.h>

#include "core/kernels/cuda/cublas_gemm.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/dense_kernels.h"
#include "core/kernels/cuda/gelu_kernels.h"
#include "models/moe/cuda_moe_context.h"
#include "models/moe/expert_compute.h"

namespace moe {

namespace {

using moe_cuda::DeviceArray;
using moe_cuda::NewDeviceTensor;
using Act = MoeLayerOptions::Activation;

class CudaExpertCompute : public ExpertCompute {
 public:
  explicit CudaExpertCompute(void* stream) : s_(static_cast<cudaStream_t>(stream)) {}
  Device device() const override { return Device::kCUDA; }
  Tensor NewRows(int64_t rows, int64_t cols) override { return NewDeviceTensor({rows, cols}, s_); }

  void Forward(const ExpertWeights& w, const ExpertShape& s, int64_t m, const float* x,
               float* pre, float* act, float* y) override {
    const int64_t D = s.dim, H = s.hidden;
    CudaSgemm(false, false, m, H, D, 1.f, x, D, w.w1, H, 0.f, pre, H, s_);
    BiasAddRowsCuda(pre, w.b1, m, H, s_);
    if (s.activation == Act::kRelu) {
      ReluForwardCuda(pre, act, m * H, s_);
    } else {
      GeluForwardCuda(pre, act, m * H, s_);
    }
    CudaSgemm(false, false, m, D, H, 1.f, act, H, w.w2, D, 0.f, y, D, s_);
    BiasAddRowsCuda(y, w.b2, m, D, s_);
  }

  // Used only by work on the stream: stream-ordered on it, so its release (when the next
  // Backward replaces it) is ordered after the kernels that used it, without a host wait.
  float* HiddenGradScratch(int64_t count) override {
    scratch_ = DeviceArray<float>(count, s_);
    return scratch_.get();
  }

  void Backward(const ExpertWeights& w, const ExpertShape& s, int64_t m, const float* x,
                const float* pre, const float* act, const float* dy, float* dh,
                float* dx) override {
    const int64_t D = s.dim, H = s.hidden;
    // Second layer: dW2 += H^T dY, db2 += colsum(dY), dH = dY W2^T (grads accumulate, beta = 1).
    CudaSgemm(true, false, H, D, m, 1.f, act, H, dy, D, 1.f, w.dw2, D, s_);
    ColumnSumAccumulateCuda(dy, m, D, w.db2, s_);
    CudaSgemm(false, true, m, H, D, 1.f, dy, D, w.w2, D, 0.f, dh, H, s_);
    // In place: dH_pre = act'(H_pre) * dH.
    if (s.activation == Act::kRelu) {
      ReluBackwardCuda(pre, dh, dh, m * H, s_);
    } else {
      GeluBackwardCuda(pre, dh, dh, m * H, s_);
    }
    // First layer.
    CudaSgemm(true, false, D, H, m, 1.f, x, D, dh, H, 1.f, w.dw1, H, s_);
    ColumnSumAccumulateCuda(dh, m, H, w.db1, s_);
    CudaSgemm(false, true, m, D, H, 1.f, dh, H, w.w1, H, 0.f, dx, D, s_);
  }

 private:
  cudaStream_t s_;
  DeviceArray<float> scratch_;
};

}  // namespace

std::unique_ptr<ExpertCompute> MakeCudaExpertCompute(void* stream) {
  return std::make_unique<CudaExpertCompute>(stream);
}

}  // namespace moe
