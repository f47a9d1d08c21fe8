// ExpertBank on device tensors: the same two-layer MLP (GELU or ReLU) per local expert as
// expert_bank.cc, with cuBLAS GEMMs and the CUDA GELU / ReLU / bias kernels, all enqueued on the stream the MoE layer set
// (set_cuda_stream). Compiled only with the CUDA path (MOE_EP_HAS_CUDA); plain C++ calling the
// kernels of core/kernels/cuda, so it lives with the layer it belongs to and needs no nvcc.
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
// d(hidden) is a stream-ordered buffer on the layer's stream.
//
// Numerics: GEMM then bias (the CPU writes the bias first and accumulates the GEMM into it), bias
// gradients summed in double (ColumnSumAccumulateCuda; the CPU sums in float): equal to the CPU
// up to float rounding, not bit for bit.
#ifdef MOE_EP_HAS_CUDA

#include <cuda_runtime_api.h>
#include <glog/logging.h>

#include "core/kernels/cuda/cublas_gemm.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/dense_kernels.h"
#include "core/kernels/cuda/gelu_kernels.h"
#include "models/moe/expert_bank.h"
#include "models/moe/cuda_moe_context.h"

namespace moe {

using moe_cuda::DeviceArray;
using moe_cuda::NewDeviceTensor;

Tensor ExpertBank::ForwardCuda(const Tensor& input, const std::vector<int64_t>& rows_per_expert) {
  CHECK_EQ(static_cast<int>(rows_per_expert.size()), num_local_);
  CHECK_EQ(input.ndim(), 2);
  CHECK_EQ(input.dim(1), dim_);
  CHECK(experts_[0].w1.value.device() == Device::kCUDA)
      << "ExpertBank: device input with host parameters (MoveTo(Device::kCUDA) first)";
  int64_t total = 0;
  for (int64_t r : rows_per_expert) total += r;
  CHECK_EQ(total, input.dim(0)) << "expert rows do not add up to the dispatched rows";
  cudaStream_t s = static_cast<cudaStream_t>(cuda_stream_);
  input_ = input;
  rows_ = rows_per_expert;
  hidden_pre_ = NewDeviceTensor({total, hidden_}, s);
  hidden_act_ = NewDeviceTensor({total, hidden_}, s);
  Tensor out = NewDeviceTensor({total, dim_}, s);
  int64_t row = 0;
  for (int l = 0; l < num_local_; ++l) {
    const int64_t m = rows_[l];
    if (m == 0) continue;
    Expert& ex = experts_[l];
    float* hp = hidden_pre_.data() + row * hidden_;
    float* ha = hidden_act_.data() + row * hidden_;
    float* y = out.data() + row * dim_;
    CudaSgemm(false, false, m, hidden_, dim_, 1.f, input.data() + row * dim_, dim_,
              ex.w1.value.data(), hidden_, 0.f, hp, hidden_, s);
    BiasAddRowsCuda(hp, ex.b1.value.data(), m, hidden_, s);
    if (activation_ == Activation::kRelu) ReluForwardCuda(hp, ha, m * hidden_, s);
    else GeluForwardCuda(hp, ha, m * hidden_, s);
    CudaSgemm(false, false, m, dim_, hidden_, 1.f, ha, hidden_, ex.w2.value.data(), dim_, 0.f, y,
              dim_, s);
    BiasAddRowsCuda(y, ex.b2.value.data(), m, dim_, s);
    row += m;
  }
  return out;
}

Tensor ExpertBank::BackwardCuda(const Tensor& d_output) {
  CHECK_EQ(d_output.numel(), input_.numel()) << "ExpertBank::Backward without matching Forward";
  CHECK(input_.device() == Device::kCUDA) << "ExpertBank: device gradient after a host Forward";
  cudaStream_t s = static_cast<cudaStream_t>(cuda_stream_);
  const int64_t total = input_.dim(0);
  Tensor d_input = NewDeviceTensor({total, dim_}, s);
  // Scratch used only here, by work on `s`: stream-ordered on `s` itself, so its release at the
  // end of this function is ordered after the kernels below by construction (no host wait).
  DeviceArray<float> d_hidden(total * hidden_, s);
  int64_t row = 0;
  for (int l = 0; l < num_local_; ++l) {
    const int64_t m = rows_[l];
    if (m == 0) continue;
    Expert& ex = experts_[l];
    const float* dy = d_output.data() + row * dim_;
    const float* x = input_.data() + row * dim_;
    const float* hp = hidden_pre_.data() + row * hidden_;
    const float* ha = hidden_act_.data() + row * hidden_;
    float* dh = d_hidden.get() + row * hidden_;
    // Second layer: dW2 += H^T dY, db2 += colsum(dY), dH = dY W2^T (grads accumulate, beta = 1).
    CudaSgemm(true, false, hidden_, dim_, m, 1.f, ha, hidden_, dy, dim_, 1.f, ex.w2.grad.data(),
              dim_, s);
    ColumnSumAccumulateCuda(dy, m, dim_, ex.b2.grad.data(), s);
    CudaSgemm(false, true, m, hidden_, dim_, 1.f, dy, dim_, ex.w2.value.data(), dim_, 0.f, dh,
              hidden_, s);
    // In place: dH_pre = act'(H_pre) * dH.
    if (activation_ == Activation::kRelu) ReluBackwardCuda(hp, dh, dh, m * hidden_, s);
    else GeluBackwardCuda(hp, dh, dh, m * hidden_, s);
    // First layer.
    CudaSgemm(true, false, dim_, hidden_, m, 1.f, x, dim_, dh, hidden_, 1.f, ex.w1.grad.data(),
              hidden_, s);
    ColumnSumAccumulateCuda(dh, m, hidden_, ex.b1.grad.data(), s);
    CudaSgemm(false, true, m, dim_, hidden_, 1.f, dh, hidden_, ex.w1.value.data(), hidden_, 0.f,
              d_input.data() + row * dim_, dim_, s);
    row += m;
  }
  return d_input;  // d_hidden: cudaFreeAsync on s, after the kernels above
}

}  // namespace moe

#endif  // MOE_EP_HAS_CUDA
