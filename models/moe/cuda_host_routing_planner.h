// The CUDA backend's planner for every rule the device kernels do not decide (all but plain token
// top-k): the tokens never leave the device -- dispatch, all-to-all, experts and combine run on
// it -- but the routing DECISION is taken on the host by the very code the CPU path runs
// (DecideFromLogits: noise, softmax, the rule's selection, capacity slots, metrics, aux losses;
// CleanLogitsGradOnHost: the rule's gate backward, softmax backward, aux terms). These rules are
// sequential scans and small sorts over [rows, E]: little work, awkward kernels.
//   Forward:  router logits on the device (cuBLAS; an image-mean router first averages each
//             image's tokens with a kernel that rounds as the host loop does), copied down; the
//             rule on the host; the plan (expert, slot, gate per choice) and the send-block
//             sizes and offsets copied up.
//   Backward: the combine backward writes d(gate) per choice on the device; it is copied down
//             while the all-to-all and the expert backward run; the host turns it into
//             d(clean logits) [router rows, E], which goes up for two cuBLAS GEMMs: router grad
//             += router_in^T d_logits, dx += d_logits W^T (image mean: spread over the image's
//             tokens by a kernel).
//   Attribute router input: LayerNorm(Linear(attributes)) (+ token) is formed on the host (its
//             input is host data), in host copies of the two embedding layers refreshed from the
//             device parameters every Forward; the logits are then a host GEMM with a downloaded
//             copy of W, bit for bit the CPU path's. Backward: the router-weight and embedding
//             gradients are computed on the host and added to the device gradients; with the
//             token in the router input, dx gets d_logits W^T on the device.
// Host waits per step: Forward 1 (the logits, or the attribute router's weights / tokens), plus 1
// for the exchanged block sizes when dropless with NCCL; Backward 1 (d(gate)). The device idles
// while the host decides: the price of sharing the host code. All copies go through pinned
// staging; nothing here synchronises the whole device.
// PCIe bytes per step and layer (f = 4-byte float/int, l = 8-byte int64; RR router rows, kc
// choices per row, G groups): plan up rows*kc*3f + 2*E*G*l; logits down RR*E*f; d(gate) down
// rows*kc*f; d(logits) up RR*E*f. E.g. rows 4096, E 8, k 2, G 16: ~0.4 MB (kc 2), 0.8 MB for the
// expert-side rules (kc 8), next to 12.6 MB of layer input at D 768. The attribute router moves
// W and the embedding's parameters instead of logits, plus the token rows with the token (there
// a device copy of the embedding would be cheaper, at the price of logits no longer bit-identical
// to the CPU path's).
#pragma once

#include <memory>
#include <vector>

#include "models/moe/cuda_moe_context.h"
#include "models/moe/routing_planner.h"

namespace moe {

class CudaHostRoutingPlanner : public RoutingPlanner {
 public:
  CudaHostRoutingPlanner(const MoeLayerView& layer, std::shared_ptr<CudaMoeContext> cuda);
  const DispatchPlan& Plan(const Tensor& x) override;
  GateGradTarget StartBackward() override;
  void Backward(Tensor* dx) override;
  const RoutingState* host_state() const override { return R_.get(); }

 private:
  void DeviceLogits(const Tensor& x);          // image mean (if any) + cuBLAS, downloaded
  void AttributeLogitsOnHost(const Tensor& x);  // host mirrors of the embedding, host GEMM
  void UploadPlan();
  void ExchangeDroplessSizes();
  void AttributeBackward(const std::vector<float>& d_clean, Tensor* dx);
  void DeviceRouterBackward(const std::vector<float>& d_clean, Tensor* dx);

  MoeLayerView L_;
  std::shared_ptr<CudaMoeContext> cuda_;
  std::shared_ptr<RoutingState> R_;
  DispatchPlan plan_;
  moe_cuda::DeviceArray<int> expert_, slot_;
  moe_cuda::DeviceArray<float> gate_;
  moe_cuda::DeviceArray<int64_t> block_rows_, block_offset_, recv_block_rows_;
  moe_cuda::DeviceArray<float> router_in_;  // image means [B, D]; other inputs route on x
  Tensor x_;                                // the Forward's input (device)
  moe_cuda::DeviceArray<float> dgate_;      // Backward: d(gate) per choice [rows * kc]
  const float* dgate_host_ = nullptr;
  std::vector<float> w_host_;               // attribute router: this step's W [D, E]
  std::unique_ptr<Layer> attr_proj_host_, attr_norm_host_;
};

}  // namespace moe
