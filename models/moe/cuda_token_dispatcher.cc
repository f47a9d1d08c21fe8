#include "models/moe/cuda_token_dispatcher.h"

#include <cuda_runtime_api.h>
#include <glog/logging.h>

#include <utility>

#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/moe_dispatch_kernels.h"

namespace moe {

using moe_cuda::DeviceAllToAllV;
using moe_cuda::DeviceArray;
using moe_cuda::DeviceExchange;
using moe_cuda::DevicePhase;
using moe_cuda::NewDeviceTensor;

CudaTokenDispatcher::CudaTokenDispatcher(const std::string& layer,
                                         std::shared_ptr<CudaMoeContext> cuda, int num_experts,
                                         int ep_size, int dim)
    : layer_(layer), cuda_(std::move(cuda)), num_experts_(num_experts), ep_size_(ep_size),
      dim_(dim) {}

void CudaTokenDispatcher::BeginStep(Profiler* profiler) {
  TokenDispatcher::BeginStep(profiler);
  cuda_->profiler = profiler;
  cuda_->EnterFromLegacyStream();  // x / dy were produced there
}

void CudaTokenDispatcher::SyncIfProfiling() {
  if (profiler_ != nullptr) CUDA_CHECK(cudaStreamSynchronize(cuda_->stream));
}

Tensor CudaTokenDispatcher::Dispatch(const Tensor& x, const DispatchPlan& plan) {
  CHECK(plan.block_offset_device != nullptr && plan.recv_block_rows_device != nullptr &&
        !plan.recv_block_rows.empty())
      << layer_ << ": a device dispatch needs the plan's device block offsets and received sizes";
  plan_ = plan;
  const cudaStream_t s = cuda_->stream;
  const int64_t D = dim_;
  layout_ = ComputeDispatchLayout(plan_.block_rows, plan_.recv_block_rows, num_experts_, ep_size_,
                                  plan_.groups);
  DeviceArray<float> send;
  {
    DevicePhase ph(profiler_, "dispatch_pack", s);
    // kc choices per row: top_k, or E with slot -1 for "not taken" (expert-side rules); the
    // kernels skip a choice with slot -1 whatever kc is.
    choice_row_ = DeviceArray<int>(plan_.rows * plan_.kc, s);
    row_choice_ = DeviceArray<int>(layout_.send_rows, s);
    BuildDispatchMapsCuda(plan_.expert, plan_.slot, plan_.block_offset_device, plan_.rows,
                          plan_.kc, plan_.group_tokens, num_experts_, layout_.send_rows,
                          choice_row_.get(), row_choice_.get(), s);
    send = DeviceArray<float>(layout_.send_rows * D, s);  // padding rows are written as zeros
    DispatchPackCuda(x.data(), row_choice_.get(), layout_.send_rows, plan_.kc, D, send.get(), s);
  }
  return ToExperts(send.get(), "a2a_dispatch", layout_.send_rows * D * sizeof(float));
}

Tensor CudaTokenDispatcher::Combine(const Tensor& expert_out) {
  const cudaStream_t s = cuda_->stream;
  returned_ = DeviceArray<float>(layout_.send_rows * dim_, s);
  FromExperts(expert_out, returned_.get(), "a2a_combine");
  Tensor y = NewDeviceTensor({plan_.rows, dim_}, s);
  DevicePhase ph(profiler_, "combine", s);
  CombineCuda(returned_.get(), choice_row_.get(), plan_.gate, plan_.rows, plan_.kc, dim_,
              y.data(), s);
  return y;
}

// d(expert output) = gate * dy; <dy, expert output> per kept choice goes to d(gate) per choice,
// or (the device router) straight into d(probs) at the choice's expert.
Tensor CudaTokenDispatcher::CombineBackward(const Tensor& dy, const GateGradTarget& gate_grad) {
  const cudaStream_t s = cuda_->stream;
  DeviceArray<float> d_returned(layout_.send_rows * dim_, s);
  {
    DevicePhase ph(profiler_, "combine_bwd", s);
    CombineBackwardCuda(dy.data(), returned_.get(), plan_.gate, plan_.expert, choice_row_.get(),
                        row_choice_.get(), plan_.rows, plan_.kc, num_experts_, layout_.send_rows,
                        dim_, d_returned.get(), gate_grad.d_gate, gate_grad.d_probs, s);
    if (gate_grad.on_written) gate_grad.on_written();
  }
  return ToExperts(d_returned.get(), "a2a_combine_bwd", layout_.send_rows * dim_ * sizeof(float));
}

Tensor CudaTokenDispatcher::DispatchBackward(const Tensor& d_expert_in) {
  const cudaStream_t s = cuda_->stream;
  DeviceArray<float> d_send(layout_.send_rows * dim_, s);
  FromExperts(d_expert_in, d_send.get(), "a2a_dispatch_bwd");
  Tensor dx = NewDeviceTensor({plan_.rows, dim_}, s);
  DevicePhase ph(profiler_, "dispatch_bwd", s);
  DispatchBackwardCuda(d_send.get(), choice_row_.get(), plan_.rows, plan_.kc, dim_, dx.data(),
                       /*accumulate=*/false, s);
  return dx;
}

Tensor CudaTokenDispatcher::ToExperts(const float* send, const char* phase, int64_t bytes) {
  const cudaStream_t s = cuda_->stream;
  const int El = num_experts_ / ep_size_;
  Tensor expert_major = NewDeviceTensor({layout_.recv_rows, dim_}, s);
  DeviceExchange ph(profiler_, phase, s, bytes);
  DeviceArray<float> received(layout_.recv_rows * dim_, s);
  DeviceAllToAllV(cuda_->nccl, s, send, layout_.send_rows_per_peer, received.get(),
                  layout_.recv_rows_per_peer, dim_);
  PermuteBlocksCuda(received.get(), expert_major.data(), dim_, plan_.recv_block_rows_device,
                    ep_size_, El, plan_.groups, layout_.recv_rows, /*to_expert_major=*/true, s);
  return expert_major;
}

void CudaTokenDispatcher::FromExperts(const Tensor& expert_rows, float* back, const char* phase) {
  const cudaStream_t s = cuda_->stream;
  const int El = num_experts_ / ep_size_;
  DeviceExchange ph(profiler_, phase, s, expert_rows.numel() * sizeof(float));
  DeviceArray<float> src_major(layout_.recv_rows * dim_, s);
  PermuteBlocksCuda(expert_rows.data(), src_major.get(), dim_, plan_.recv_block_rows_device,
                    ep_size_, El, plan_.groups, layout_.recv_rows, /*to_expert_major=*/false, s);
  DeviceAllToAllV(cuda_->nccl, s, src_major.get(), layout_.recv_rows_per_peer, back,
                  layout_.send_rows_per_peer, dim_);
}

}  // namespace moe
