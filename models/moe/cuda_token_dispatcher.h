// The device-memory TokenDispatcher: the dispatch / combine kernels of
// core/kernels/cuda/moe_dispatch_kernels.h and the device communicator's all-to-all-v (NCCL), on
// the layer's stream (cuda_moe_context.h). The plan's per-choice arrays, block offsets and
// received block sizes are device arrays (DispatchPlan's *_device fields); its block sizes are
// also on the host, where they size the all-to-alls and the expert GEMMs.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "models/moe/cuda_moe_context.h"
#include "models/moe/token_dispatcher.h"

namespace moe {

class CudaTokenDispatcher : public TokenDispatcher {
 public:
  CudaTokenDispatcher(const std::string& layer, std::shared_ptr<CudaMoeContext> cuda,
                      int num_experts, int ep_size, int dim);

  void BeginStep(Profiler* profiler) override;
  void EndStep() override { cuda_->LeaveToLegacyStream(); }
  void* device_stream() const override { return cuda_->stream; }
  void SyncIfProfiling() override;

  Tensor Dispatch(const Tensor& x, const DispatchPlan& plan) override;
  const std::vector<int64_t>& expert_rows() const override { return layout_.expert_rows; }
  Tensor Combine(const Tensor& expert_out) override;
  Tensor CombineBackward(const Tensor& dy, const GateGradTarget& gate_grad) override;
  Tensor DispatchBackward(const Tensor& d_expert_in) override;

 private:
  // Send layout (device rows) -> all-to-all -> expert-major Tensor, and its inverse.
  Tensor ToExperts(const float* send, const char* phase, int64_t bytes);
  void FromExperts(const Tensor& expert_rows, float* back, const char* phase);

  std::string layer_;
  std::shared_ptr<CudaMoeContext> cuda_;
  int num_experts_, ep_size_, dim_;
  DispatchPlan plan_;
  DispatchLayout layout_;
  moe_cuda::DeviceArray<int> choice_row_, row_choice_;  // (row, choice) <-> send row maps
  moe_cuda::DeviceArray<float> returned_;  // expert outputs back at the source, send layout
};

}  // namespace moe
