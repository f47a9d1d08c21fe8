#include "models/moe/cuda_pipelined_token_dispatcher.h"

#include <glog/logging.h>

#include <tuple>
#include <utility>

#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/moe_dispatch_kernels.h"
#include "core/kernels/cuda/stream.h"

namespace moe {

using moe_cuda::DeviceAllToAllV;
using moe_cuda::DeviceArray;
using moe_cuda::DeviceExchange;
using moe_cuda::DevicePhase;
using moe_cuda::NewDeviceTensor;

CudaPipelinedTokenDispatcher::CudaPipelinedTokenDispatcher(const std::string& layer,
                                                           std::shared_ptr<CudaMoeContext> cuda,
                                                           int num_experts, int ep_size, int dim,
                                                           int chunks)
    : ExpertDrivingDispatcher(layer), cuda_(std::move(cuda)), num_experts_(num_experts),
      ep_size_(ep_size), dim_(dim), max_chunks_(chunks) {
  CHECK_GE(chunks, 1) << layer << ": parallel.pipeline_chunks=" << chunks << " must be >= 1";
  // Non-blocking: the compute stream must not serialise with the legacy stream behind our back;
  // every ordering with it is explicit (Fork, Join, NewDeviceTensor).
  CUDA_CHECK(cudaStreamCreateWithFlags(&compute_, cudaStreamNonBlocking));
}

CudaPipelinedTokenDispatcher::~CudaPipelinedTokenDispatcher() {
  chunks_.clear();  // frees on the compute stream, before it goes
  step_tensors_.clear();
  // Errors ignored: at process exit the runtime may be gone.
  for (cudaEvent_t e : exchanged_) cudaEventDestroy(e);
  if (compute_ != nullptr) cudaStreamDestroy(compute_);
}

void CudaPipelinedTokenDispatcher::BeginStep(Profiler* profiler) {
  TokenDispatcher::BeginStep(profiler);
  cuda_->profiler = profiler;
  cuda_->EnterFromLegacyStream();  // x / dy were produced there
}

void CudaPipelinedTokenDispatcher::EndStep() {
  cuda_->LeaveToLegacyStream();  // the communicator stream has joined the compute stream
  step_tensors_.clear();         // freed on the legacy stream, now after their last use
}

void CudaPipelinedTokenDispatcher::SyncIfProfiling() {
  if (profiler_ != nullptr) CUDA_CHECK(cudaStreamSynchronize(compute_));
}

void CudaPipelinedTokenDispatcher::Fork() { OrderAfter(compute_, cuda_->stream); }
void CudaPipelinedTokenDispatcher::Join() { OrderAfter(cuda_->stream, compute_); }

cudaEvent_t CudaPipelinedTokenDispatcher::ChunkEvent(int c) {
  while (static_cast<int>(exchanged_.size()) <= c) {
    cudaEvent_t e = nullptr;
    CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    exchanged_.push_back(e);
  }
  return exchanged_[c];
}

// The chunks of `plan`, their device block tables and dispatch maps (on the compute stream).
void CudaPipelinedTokenDispatcher::Prepare(const DispatchPlan& plan) {
  CHECK(!plan.recv_block_rows.empty())
      << layer_ << ": a device dispatch needs the plan's received block sizes on the host";
  rows_ = plan.rows;
  chunks_.clear();
  for (DispatchChunk& split :
       SplitIntoChunks(plan, plan.recv_block_rows, num_experts_, ep_size_, max_chunks_)) {
    chunks_.emplace_back();
    static_cast<DispatchChunk&>(chunks_.back()) = std::move(split);
  }
  UploadTables();
  for (Chunk& c : chunks_) {
    c.choice_row = DeviceArray<int>(c.plan.rows * c.plan.kc, compute_);
    c.row_choice = DeviceArray<int>(c.layout.send_rows, compute_);
    BuildDispatchMapsCuda(c.plan.expert, c.plan.slot, c.block_offset.get(), c.plan.rows,
                          c.plan.kc, c.plan.group_tokens, num_experts_, c.layout.send_rows,
                          c.choice_row.get(), c.row_choice.get(), compute_);
  }
}

// Each chunk's block offsets and received block sizes, staged through the context's pinned
// buffer on the communicator stream into arrays the compute stream owns.
void CudaPipelinedTokenDispatcher::UploadTables() {
  std::vector<std::tuple<void*, const void*, size_t>> parts;
  for (Chunk& c : chunks_) {
    c.block_offset = DeviceArray<int64_t>(c.layout.block_offset.size(), compute_);
    c.recv_rows = DeviceArray<int64_t>(c.recv_block_rows.size(), compute_);
    parts.emplace_back(c.block_offset.get(), c.layout.block_offset.data(),
                       c.layout.block_offset.size() * sizeof(int64_t));
    parts.emplace_back(c.recv_rows.get(), c.recv_block_rows.data(),
                       c.recv_block_rows.size() * sizeof(int64_t));
  }
  Join();  // the allocations above come before the copies
  cuda_->Upload(parts);
  Fork();
}

CudaPipelinedTokenDispatcher::Buffers CudaPipelinedTokenDispatcher::PackChunks(const Tensor& x) {
  Buffers send;
  for (const Chunk& c : chunks_) {
    send.emplace_back(c.layout.send_rows * dim_, compute_);  // padding rows written as zeros
    DispatchPackCuda(x.data() + c.first_row * dim_, c.row_choice.get(), c.layout.send_rows,
                     c.plan.kc, dim_, send.back().get(), compute_);
  }
  return send;
}

// Chunk c's received rows (src-major) -> the experts -> their answer, src-major, in src_major.
Tensor CudaPipelinedTokenDispatcher::RunExperts(int c, const DeviceArray<float>& received,
                                                const ChunkExpertsFn& experts, float* src_major) {
  const Chunk& ch = chunks_[c];
  const int El = num_experts_ / ep_size_;
  Tensor expert_major = NewDeviceTensor({ch.layout.recv_rows, dim_}, compute_);
  PermuteBlocksCuda(received.get(), expert_major.data(), dim_, ch.recv_rows.get(), ep_size_, El,
                    ch.plan.groups, ch.layout.recv_rows, /*to_expert_major=*/true, compute_);
  Tensor answer = experts(c, expert_major);
  CHECK_EQ(answer.numel(), ch.layout.recv_rows * dim_) << layer_ << ": chunk " << c;
  PermuteBlocksCuda(answer.data(), src_major, dim_, ch.recv_rows.get(), ep_size_, El,
                    ch.plan.groups, ch.layout.recv_rows, /*to_expert_major=*/false, compute_);
  step_tensors_.push_back(expert_major);
  return answer;
}

CudaPipelinedTokenDispatcher::Buffers CudaPipelinedTokenDispatcher::Pipeline(
    const Buffers& outgoing, const ChunkExpertsFn& experts, const char* to_phase,
    const char* back_phase) {
  const cudaStream_t comm = cuda_->stream;
  const int K = static_cast<int>(chunks_.size());
  const int64_t D = dim_;
  Buffers received, src_major, back;
  for (const Chunk& c : chunks_) {  // every buffer before the communicator stream may use one
    received.emplace_back(c.layout.recv_rows * D, compute_);
    src_major.emplace_back(c.layout.recv_rows * D, compute_);
    back.emplace_back(c.layout.send_rows * D, compute_);
  }
  Join();  // the outgoing rows are written, the buffers allocated
  auto exchange_to_experts = [&](int c) {
    const DispatchLayout& L = chunks_[c].layout;
    {
      DeviceExchange ph(profiler_, to_phase, comm, L.send_rows * D * sizeof(float));
      DeviceAllToAllV(cuda_->nccl, comm, outgoing[c].get(), L.send_rows_per_peer,
                      received[c].get(), L.recv_rows_per_peer, D);
    }
    CUDA_CHECK(cudaEventRecord(ChunkEvent(c), comm));
  };
  exchange_to_experts(0);
  for (int c = 0; c < K; ++c) {
    if (c + 1 < K) exchange_to_experts(c + 1);  // travels while chunk c's experts run
    CUDA_CHECK(cudaStreamWaitEvent(compute_, ChunkEvent(c), 0));
    step_tensors_.push_back(RunExperts(c, received[c], experts, src_major[c].get()));
    Join();  // chunk c's answer is ready to go back
    const DispatchLayout& L = chunks_[c].layout;
    DeviceExchange ph(profiler_, back_phase, comm, L.recv_rows * D * sizeof(float));
    DeviceAllToAllV(cuda_->nccl, comm, src_major[c].get(), L.recv_rows_per_peer, back[c].get(),
                    L.send_rows_per_peer, D);
  }
  Fork();  // every answer is back; the buffers above are freed after this on the compute stream
  return back;
}

Tensor CudaPipelinedTokenDispatcher::ForwardThroughExperts(const Tensor& x,
                                                           const DispatchPlan& plan,
                                                           const ExpertsForwardFn& experts) {
  Fork();  // the plan's device arrays were written on the communicator stream
  Buffers send;
  {
    DevicePhase ph(profiler_, "dispatch_pack", compute_);
    Prepare(plan);
    send = PackChunks(x);
  }
  Buffers back = Pipeline(
      send,
      [&](int c, const Tensor& in) { return experts(c, in, chunks_[c].layout.expert_rows); },
      "a2a_dispatch", "a2a_combine");
  Tensor y = NewDeviceTensor({rows_, int64_t{dim_}}, compute_);
  {
    DevicePhase ph(profiler_, "combine", compute_);
    for (size_t c = 0; c < chunks_.size(); ++c) {
      Chunk& ch = chunks_[c];
      ch.returned = std::move(back[c]);
      CombineCuda(ch.returned.get(), ch.choice_row.get(), ch.plan.gate, ch.plan.rows, ch.plan.kc,
                  dim_, y.data() + ch.first_row * dim_, compute_);
    }
  }
  Join();
  return y;
}

Tensor CudaPipelinedTokenDispatcher::BackwardThroughExperts(const Tensor& dy,
                                                            const GateGradTarget& gate_grad,
                                                            const ExpertsBackwardFn& experts) {
  CHECK(!chunks_.empty()) << layer_ << ": BackwardThroughExperts before ForwardThroughExperts";
  Fork();  // dy and the planner's gradient targets
  Buffers d_returned;
  {
    DevicePhase ph(profiler_, "combine_bwd", compute_);
    for (const Chunk& c : chunks_) {
      d_returned.emplace_back(c.layout.send_rows * dim_, compute_);
      const int64_t t0 = c.first_row;
      CombineBackwardCuda(
          dy.data() + t0 * dim_, c.returned.get(), c.plan.gate, c.plan.expert,
          c.choice_row.get(), c.row_choice.get(), c.plan.rows, c.plan.kc, num_experts_,
          c.layout.send_rows, dim_, d_returned.back().get(),
          gate_grad.d_gate != nullptr ? gate_grad.d_gate + t0 * c.plan.kc : nullptr,
          gate_grad.d_probs != nullptr ? gate_grad.d_probs + t0 * num_experts_ : nullptr,
          compute_);
    }
  }
  Join();  // the planner copies d(gate) on the communicator stream
  if (gate_grad.on_written) gate_grad.on_written();
  Buffers d_send = Pipeline(d_returned, experts, "a2a_combine_bwd", "a2a_dispatch_bwd");
  Tensor dx = NewDeviceTensor({rows_, int64_t{dim_}}, compute_);
  {
    DevicePhase ph(profiler_, "dispatch_bwd", compute_);
    for (size_t c = 0; c < chunks_.size(); ++c)
      DispatchBackwardCuda(d_send[c].get(), chunks_[c].choice_row.get(), chunks_[c].plan.rows,
                           chunks_[c].plan.kc, dim_, dx.data() + chunks_[c].first_row * dim_,
                           /*accumulate=*/false, compute_);
  }
  Join();
  return dx;
}

}  // namespace moe
