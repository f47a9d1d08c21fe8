// The CUDA path's routing for every rule but plain token top-k: renormalised token top-k,
// expert choice, patch top-l, per-image and attribute routing (MoeLayer::ForwardCuda/BackwardCuda
// call these; stream ordering as moe_layer_cuda.cc's header).
//
// Design. The tokens never leave the device: dispatch, all-to-all, expert GEMMs and combine run
// with the kernels of moe_layer_cuda.cc. Only the routing DECISION is taken on the host, by the
// very functions the CPU path runs (MoeLayer::RouteFromLogits: noise, softmax, the rule's
// selection, capacity slots, metrics, aux losses; MoeLayer::RouterLogitsGrad: the rule's gate
// backward, softmax backward, aux-loss terms), so both paths share one implementation of each
// rule. These rules are sequential scans and small sorts over [rows, E] (BPR, capacity fill,
// expert choice's per-expert top-C, pMoE's per-image top-l): little work, awkward kernels.
//   Forward:  router logits on the device (cuBLAS; the per-image rule first averages each
//             image's tokens with a kernel that rounds as the host loop does), copied down;
//             RouteFromLogits on the host; the plan -- expert, slot, gate per choice, kc choices
//             per row (kc = top_k for token-side rules; E for expert choice / patch top-l, where
//             choice r is expert r and slot -1 means "not taken") -- and the send-block sizes
//             and offsets copied up. The dispatch kernels skip slot -1 for any kc.
//   Backward: the combine backward writes d(gate) per choice on the device; it is copied down
//             while the expert backward runs, RouterLogitsGrad turns it into d(clean logits)
//             [router rows, E] on the host, which goes up for two cuBLAS GEMMs: router grad
//             += router_in^T d_logits, dx += d_logits W^T (per-image: into the image means'
//             gradient, spread over the image's tokens by a kernel).
//   kAttribute: the router input LayerNorm(Linear(attributes)) (+ token) is formed on the host
//             (its input is host data), in host copies of the two embedding layers refreshed from
//             the device parameters every Forward; the parameters themselves live on the device
//             with all the others (the trainer's optimizer runs there). The logits are then a
//             host GEMM with a downloaded copy of W, bit for bit the CPU path's. Backward: the
//             router-weight and embedding gradients are computed on the host and added to the
//             device gradients; with the token in the router input, dx gets d_logits W^T on
//             the device.
//
// Host waits per step: Forward 1 (the logits, or for kAttribute the weights/tokens), plus 1 for
// the exchanged block sizes when dropless with NCCL; Backward 1 (d(gate), after the expert
// backward has been enqueued, so the device keeps working while the host catches up). The
// device idles while the host decides (a few [rows, E] passes): that is the price of sharing the
// host code. Nothing here synchronises the whole device; all copies go through pinned staging.
//
// PCIe bytes per step and MoE layer (f = 4-byte float/int, l = 8-byte int64; rows local tokens,
// RR router rows (rows, or images B = rows / T for per-image), kc choices per row, G groups):
//   every rule, Forward up:  plan rows*kc*(f + f + f) + block sizes and offsets 2*E*G*l
//                 dropless down (NCCL): E*G*l exchanged block sizes
//   kTokenTopK (renormalised), kExpertChoice, kPatchTopL:
//                 Forward down RR*E*f logits (RR = rows); Backward down rows*kc*f d(gate),
//                 up RR*E*f d(logits)
//   kPerImage:    same with RR = B (the image means and their gradient stay on the device)
//   kAttribute:   Forward down D*E*f (W) + (A*D + 3*D)*f (embedding parameters)
//                 [+ rows*D*f tokens with attribute_with_token]; Backward down rows*kc*f d(gate),
//                 up (D*E + A*D + 3*D)*f gradients [+ rows*E*f d(logits) with the token]
// E.g. rows 4096, E 8, k 2, D 768, G 16: about 0.4 MB a step for the token-side rules (kc 2),
// 0.8 MB for the expert-side ones (kc 8), per-image less (RR = B); the layer's input alone is
// 12.6 MB. kAttribute without the token: ~0.2 MB plus twice its (small) parameters; with the
// token it adds the 12.6 MB token rows down -- there a device copy of the embedding would be
// cheaper, at the price of logits that are no longer bit-identical to the CPU path's.
#ifdef MOE_EP_HAS_CUDA

#include <cuda_runtime_api.h>
#include <glog/logging.h>

#include <cstring>
#include <memory>
#include <tuple>
#include <utility>
#include <vector>

#include "core/kernels/cuda/cublas_gemm.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/dense_kernels.h"
#include "core/kernels/cuda/moe_image_router_kernels.h"
#include "models/layers/layer_norm.h"
#include "models/layers/linear.h"
#include "models/moe/moe_layer.h"
#include "models/moe/moe_layer_cuda_state.h"
#include "models/moe/moe_routing_state.h"

namespace moe {

using moe_cuda::DeviceArray;

namespace {

std::vector<Parameter*> EmbeddingParameters(Layer* proj, Layer* norm) {
  std::vector<Parameter*> ps = proj->Parameters();
  for (Parameter* p : norm->Parameters()) ps.push_back(p);
  return ps;
}

}  // namespace

bool MoeLayer::RoutesOnDevice() const {
  return opt_.rule == RoutingRule::kTokenTopK && !opt_.renormalise_gates;
}

void MoeLayer::RouteOnHostForCuda(const Tensor& x) {
  CudaState& S = *cuda_;
  const cudaStream_t s = S.stream;
  const int E = opt_.num_experts, El = experts_per_rank_;
  const int64_t D = opt_.dim, rows = S.rows, G = S.groups;
  routing_ = std::make_shared<Routing>();
  Routing& R = *routing_;
  R.rows = rows;
  R.groups = G;
  StartRouting();
  S.kc = R.kc;
  const int64_t RR = R.router_rows;

  if (opt_.rule == RoutingRule::kAttribute) {
    CHECK(ctx_.attributes != nullptr) << name_ << ": attribute routing needs the step's attributes";
    CHECK(ctx_.attributes->device() == Device::kCPU)
        << name_ << ": the attributes are host data (MoeStepContext::attributes)";
    if (!S.attr_proj_host) {
      // Built as MoeLayer's constructor builds attr_proj_/attr_norm_ (keep the two in step: same
      // classes, shapes and LayerNorm eps); the values are overwritten below every step.
      S.attr_proj_host = std::make_unique<Linear>(name_ + ".router.attr_proj", opt_.attribute_dim,
                                                  opt_.dim, seed_);
      S.attr_norm_host = std::make_unique<LayerNorm>(name_ + ".router.attr_norm", opt_.dim, seed_);
    }
    const std::vector<Parameter*> dev = EmbeddingParameters(attr_proj_.get(), attr_norm_.get());
    const std::vector<Parameter*> host =
        EmbeddingParameters(S.attr_proj_host.get(), S.attr_norm_host.get());
    CHECK_EQ(dev.size(), host.size());
    // One wait for W, the embedding's parameters and (when the router sees it) the token rows.
    std::vector<std::pair<const void*, size_t>> parts;
    parts.emplace_back(router_.value.data(), D * E * sizeof(float));
    for (size_t i = 0; i < dev.size(); ++i) {
      CHECK(dev[i]->value.shape() == host[i]->value.shape()) << dev[i]->name;
      parts.emplace_back(dev[i]->value.data(), dev[i]->value.numel() * sizeof(float));
    }
    if (opt_.attribute_with_token) parts.emplace_back(x.data(), rows * D * sizeof(float));
    const std::vector<const char*> got = S.Download(parts);
    const float* w = reinterpret_cast<const float*>(got[0]);
    S.w_host.assign(w, w + D * E);
    for (size_t i = 0; i < dev.size(); ++i)
      std::memcpy(host[i]->value.data(), got[1 + i], parts[1 + i].second);
    Tensor x_host;
    if (opt_.attribute_with_token) {
      x_host = Tensor({rows, D});
      std::memcpy(x_host.data(), got.back(), parts.back().second);
    }
    SetRouterInput(x_host, S.attr_proj_host.get(), S.attr_norm_host.get());
    RouterLogits(S.w_host.data());
  } else {
    const float* in = x.data();
    if (opt_.rule == RoutingRule::kPerImage) {
      S.router_in = DeviceArray<float>(RR * D, s);
      ImageMeanRowsCuda(x.data(), RR, opt_.tokens_per_image, D, S.router_in.get(), s);
      in = S.router_in.get();
    }
    DeviceArray<float> logits(RR * E, s);
    CudaSgemm(false, false, RR, E, D, 1.f, in, D, router_.value.data(), E, 0.f, logits.get(), E,
              s);
    const float* got =
        reinterpret_cast<const float*>(S.Download({{logits.get(), RR * E * sizeof(float)}})[0]);
    R.clean_logits.assign(got, got + RR * E);
  }
  RouteFromLogits();  // the CPU path's code from here: same plan, metrics and aux gradients

  // The plan and the send layout (as BuildSendLayout) go up in one batch of copies.
  const int64_t nc = rows * S.kc;
  S.block_rows_host = R.block_rows;
  std::vector<int64_t> block_offset(E * G);
  int64_t off = 0;
  for (int64_t b = 0; b < E * G; ++b) {
    block_offset[b] = off;
    off += R.block_rows[b];
  }
  S.expert = DeviceArray<int>(nc, s, /*poison=*/false);
  S.slot = DeviceArray<int>(nc, s, /*poison=*/false);
  S.gate = DeviceArray<float>(nc, s, /*poison=*/false);
  S.block_rows = DeviceArray<int64_t>(E * G, s, /*poison=*/false);
  S.block_offset = DeviceArray<int64_t>(E * G, s, /*poison=*/false);
  S.Upload({{S.expert.get(), R.expert.data(), nc * sizeof(int)},
            {S.slot.get(), R.slot.data(), nc * sizeof(int)},
            {S.gate.get(), R.gate.data(), nc * sizeof(float)},
            {S.block_rows.get(), R.block_rows.data(), E * G * sizeof(int64_t)},
            {S.block_offset.get(), block_offset.data(), E * G * sizeof(int64_t)}});

  // Receive-side sizes [src][local expert][group]: all C with a capacity, so the send sizes
  // serve (E*G of them either way); dropless exchanges them over the device communicator and
  // brings them back, since they size the all-to-all and the expert GEMMs. With one EP rank
  // and no device communicator the receiver is this rank: the sizes as sent.
  S.recv_block_rows = S.block_rows.get();
  S.recv_block_rows_host = S.block_rows_host;
  if (opt_.dropless && S.nccl != nullptr) {
    S.recv_block_rows_exchanged = DeviceArray<int64_t>(E * G, s);
    S.nccl->AllToAllInt64(S.block_rows.get(), S.recv_block_rows_exchanged.get(), El * G,
                          GroupKind::kExpert);
    S.recv_block_rows = S.recv_block_rows_exchanged.get();
    const int64_t* got = reinterpret_cast<const int64_t*>(
        S.Download({{S.recv_block_rows, E * G * sizeof(int64_t)}})[0]);
    S.recv_block_rows_host.assign(got, got + E * G);
  }
}

void MoeLayer::RouterBackwardForCuda(const float* d_gate_host, Tensor* dx) {
  CHECK(routing_) << name_ << ": no host-decided routing to backpropagate";
  CudaState& S = *cuda_;
  const Routing& R = *routing_;
  const cudaStream_t s = S.stream;
  const int E = opt_.num_experts;
  const int64_t D = opt_.dim, rows = S.rows, RR = R.router_rows;
  S.WaitDownload();  // d(gate), enqueued right after the combine backward
  const std::vector<float> d_gate(d_gate_host, d_gate_host + rows * S.kc);
  const std::vector<float> d_clean = RouterLogitsGrad(d_gate);

  if (opt_.rule == RoutingRule::kAttribute) {
    // The host copies hold this step's gradients alone (zeroed first); the device gradients
    // accumulate them, as Backward's contract says.
    const std::vector<Parameter*> dev = EmbeddingParameters(attr_proj_.get(), attr_norm_.get());
    const std::vector<Parameter*> host =
        EmbeddingParameters(S.attr_proj_host.get(), S.attr_norm_host.get());
    for (Parameter* p : host) p->grad.Zero();
    std::vector<float> dw(D * E, 0.f);
    ApplyRouterGrad(d_clean, S.w_host.data(), dw.data(), /*dx=*/nullptr, S.attr_proj_host.get(),
                    S.attr_norm_host.get());
    std::vector<std::tuple<void*, const void*, size_t>> parts;
    std::vector<std::pair<float*, int64_t>> adds;  // (device gradient, elements), in `up` order
    int64_t total = D * E;
    adds.emplace_back(router_.grad.data(), D * E);
    for (size_t i = 0; i < dev.size(); ++i) {
      adds.emplace_back(dev[i]->grad.data(), dev[i]->grad.numel());
      total += dev[i]->grad.numel();
    }
    const int64_t d_clean_at = total;
    if (opt_.attribute_with_token) total += RR * E;
    DeviceArray<float> up(total, s, /*poison=*/false);
    int64_t at = 0;
    parts.emplace_back(up.get(), dw.data(), D * E * sizeof(float));
    at += D * E;
    for (Parameter* p : host) {
      parts.emplace_back(up.get() + at, p->grad.data(), p->grad.numel() * sizeof(float));
      at += p->grad.numel();
    }
    if (opt_.attribute_with_token)
      parts.emplace_back(up.get() + d_clean_at, d_clean.data(), RR * E * sizeof(float));
    S.Upload(parts);
    at = 0;
    for (const auto& a : adds) {
      AddInPlaceCuda(a.first, up.get() + at, a.second, s);
      at += a.second;
    }
    if (opt_.attribute_with_token)
      CudaSgemm(false, true, rows, D, E, 1.f, up.get() + d_clean_at, E, router_.value.data(), E,
                1.f, dx->data(), D, s);
    return;
  }

  DeviceArray<float> d_logits(RR * E, s, /*poison=*/false);
  S.Upload({{d_logits.get(), d_clean.data(), RR * E * sizeof(float)}});
  const float* router_in = opt_.rule == RoutingRule::kPerImage ? S.router_in.get() : S.x.data();
  CudaSgemm(true, false, D, E, RR, 1.f, router_in, D, d_logits.get(), E, 1.f,
            router_.grad.data(), E, s);
  if (opt_.rule == RoutingRule::kPerImage) {
    DeviceArray<float> d_in(RR * D, s);
    CudaSgemm(false, true, RR, D, E, 1.f, d_logits.get(), E, router_.value.data(), E, 0.f,
              d_in.get(), D, s);
    ImageMeanRowsBackwardCuda(d_in.get(), RR, opt_.tokens_per_image, D, dx->data(), s);
  } else {
    CudaSgemm(false, true, rows, D, E, 1.f, d_logits.get(), E, router_.value.data(), E, 1.f,
              dx->data(), D, s);
  }
}

}  // namespace moe

#endif  // MOE_EP_HAS_CUDA
