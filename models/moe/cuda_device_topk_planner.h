// The CUDA backend's planner for plain token top-k (no renormalised gates): the whole decision on
// the device -- cuBLAS logits, the router noise (the host path's keyed draws), softmax, top-k,
// BPR order, capacity slots and the send layout (core/kernels/cuda/moe_routing_kernels.h).
//
// Host synchronisation, once per Forward, none in Backward:
//   - every mode: the [G, E] slot counts (metrics) and, in training with auxiliary losses on, the
//     [rows, E] router arrays they need come back to the host (pinned staging, one event). The
//     auxiliary losses run on the host with the CPU functions of aux_losses.h, and their two
//     [rows, E] gradient arrays go back up for Backward (~6 * rows * E floats over PCIe per step,
//     tiny next to the tokens).
//   - capacity mode: block sizes are all C, known on the host, so the dispatch, experts and
//     combine are enqueued BEFORE the host waits; the host waits for the routing event only in
//     FinishForward and does the metrics and auxiliary losses while the device works.
//   - dropless mode: the all-to-all sizes and the expert GEMM sizes are data-dependent, so the
//     host waits for the counts (and for the int64 all-to-all of the block sizes, done on the
//     device first) before the dispatch can be enqueued.
// Backward: the combine backward adds <dy, expert output> straight into d(probs) [rows, E]
// (which starts as the switch loss's gradient), then the device softmax backward, the other aux
// terms, and two cuBLAS GEMMs for W_r's gradient and dx.
#pragma once

#include <memory>
#include <vector>

#include "models/moe/cuda_moe_context.h"
#include "models/moe/routing_planner.h"

namespace moe {

class CudaDeviceTopKPlanner : public RoutingPlanner {
 public:
  CudaDeviceTopKPlanner(const MoeLayerView& layer, std::shared_ptr<CudaMoeContext> cuda);
  const DispatchPlan& Plan(const Tensor& x) override;
  void FinishForward() override;
  GateGradTarget StartBackward() override;
  void Backward(Tensor* dx) override;

 private:
  // What this Forward computes on the device, and which router arrays the aux losses read.
  struct Step {
    int64_t rows = 0, groups = 0, capacity = 0;
    bool noisy = false;
    float sigma = 0.f;
    bool importance = false, load = false, switch_loss = false, z = false;
    bool AnyAux() const { return importance || load || switch_loss || z; }
  };
  void RouteOnDevice(const Tensor& x);
  void ExchangeDroplessSizes();
  void DownloadRoutingArrays();
  void BlockSizesOnHost();
  void CountMetrics();
  void AuxLossesOnHost();

  MoeLayerView L_;
  std::shared_ptr<CudaMoeContext> cuda_;
  Step step_;
  DispatchPlan plan_;
  Tensor x_;
  moe_cuda::DeviceArray<float> clean_, noisy_, probs_, probs_clean_;  // [rows, E]
  const float* noisy_logits_ = nullptr;  // noisy_, or clean_ without noise
  const float* probs_clean_ptr_ = nullptr;  // probs_clean_, or probs_ without noise
  moe_cuda::DeviceArray<int> expert_, slot_, order_;
  moe_cuda::DeviceArray<float> gate_;
  moe_cuda::DeviceArray<int64_t> counts_, block_rows_, block_offset_, recv_block_rows_;
  const int64_t* recv_block_rows_device_ = nullptr;
  // Host copies (pinned staging), valid after the routing event.
  const int64_t* counts_host_ = nullptr;
  const int64_t* recv_block_rows_host_ = nullptr;
  const float *clean_host_ = nullptr, *noisy_host_ = nullptr, *probs_host_ = nullptr,
              *probs_clean_host_ = nullptr;
  bool waited_ = false;
  // Auxiliary-loss gradients from the host, applied in Backward: d_probs_aux (switch loss) joins
  // d(probs) before the softmax backward; d_logits_extra = d_logits_aux (z) +
  // softmax_bwd(probs_clean, d_probs_clean_aux) (importance) + d_clean_logits_aux (load) joins
  // d(clean logits), summed in that order, as the host path does.
  bool have_aux_grads_ = false;
  moe_cuda::DeviceArray<float> d_probs_aux_, d_logits_extra_, d_probs_;
};

}  // namespace moe
