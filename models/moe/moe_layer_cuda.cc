// MoeLayer on device tensors: the maths of moe_layer.cc step for step, with the kernels of
// core/kernels/cuda (routing, dispatch, GELU, cuBLAS) and the communicator's all-to-alls on
// device memory. Chosen by the input's device (MoeLayer::Forward/Backward dispatch here);
// compiled only with the CUDA path (MOE_EP_HAS_CUDA). Plain C++: it only calls kernels, so it
// lives next to the CPU layer and needs no nvcc.
//
// Stream: everything is enqueued on the device communicator's stream (Communicator::device_stream)
// when the layer's communicator works on device memory (so the all-to-alls need no extra
// ordering), else on the legacy default stream. The
// dense layers run on the legacy default stream (models/layers/layer.h), so Forward and Backward
// make their stream wait for the legacy stream on entry and the legacy stream wait for theirs on
// exit (two event records, no host wait): correct even when the NCCL stream is non-blocking.
// y / dx are ready in that order, not on return. A host-memory communicator (works_on_device()
// false) is used only with ep_size == 1, where
// the all-to-alls are local device copies.
//
// Routing rules: plain token top-k routes on the device (below). Every other rule (renormalised
// token top-k, expert choice, patch top-l, per-image, attribute) takes its routing decision on
// the host with the CPU path's own code and uploads the plan; dispatch, all-to-alls, experts and
// combine are the same kernels for all of them (kc choices per row, slot -1 = not taken).
// Design, host waits and PCIe bytes per rule: moe_layer_cuda_host_route.cc's header. State
// shared by the two files: moe_layer_cuda_state.h.
//
// Host synchronisation of the device token top-k router, once per Forward, none in Backward:
//   - every mode: the [G, E] slot counts (metrics) and, in training with auxiliary losses on, the
//     [rows, E] router arrays they need come back to the host (pinned staging, one event). The
//     auxiliary losses have no device kernels yet: their values and gradients are computed by the
//     CPU functions of aux_losses.h and the two [rows, E] gradient arrays are copied back for
//     Backward. Known cost: ~6 * rows * E floats over PCIe per step, tiny next to the tokens.
//   - capacity mode: block sizes are all C, known on the host, so the dispatch, experts and
//     combine are enqueued BEFORE the host waits; the host then waits for the routing event only
//     and does the metrics and auxiliary losses while the device works.
//   - dropless mode: the all-to-all sizes and the expert GEMM sizes are data-dependent, so the
//     host waits for the counts (and for the int64 all-to-all of the block sizes, done on the
//     device first) before it can enqueue the dispatch.
// With a Profiler attached every phase ends with a cudaStreamSynchronize, so the phase times mean
// device time (profiling serialises host and device; without a profiler nothing extra waits).
//
// Memory: router/dispatch buffers internal to this file are stream-ordered (cudaMallocAsync /
// cudaFreeAsync on the layer's stream): freeing them never waits. What crosses an interface
// (the expert bank's input/output, y, dx) is a Tensor, whose memory is stream-ordered on the
// LEGACY stream (core/kernels/cuda/device_memory_cuda.cu): NewDeviceTensor orders the layer's
// stream after its allocation, and every Tensor the layer's stream uses stays referenced until
// LeaveToLegacyStream has ordered the legacy stream (where it will be freed) after that use --
// by the layer state, the expert bank, or a local of Forward/Backward's outermost scope, which
// is destroyed after the Leave at the end. Never a local of an inner scope.
#ifdef MOE_EP_HAS_CUDA

#include <cuda_runtime_api.h>
#include <glog/logging.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "core/kernels/cuda/cublas_gemm.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/dense_kernels.h"
#include "core/kernels/cuda/moe_dispatch_kernels.h"
#include "core/kernels/cuda/moe_routing_kernels.h"
#include "core/rng.h"
#include "models/moe/aux_losses.h"
#include "models/moe/expert_bank.h"
#include "models/moe/moe_layer.h"
#include "models/moe/moe_layer_cuda_state.h"
#include "models/moe/router_math.h"

namespace moe {

using moe_cuda::DeviceAllToAllV;
using moe_cuda::DeviceArray;
using moe_cuda::DevicePhase;
using moe_cuda::NewDeviceTensor;

Tensor MoeLayer::ForwardCuda(const Tensor& x) {
  // Shapes and the parameters' device were checked by Forward.
  if (!cuda_) {
    cuda_ = std::make_shared<CudaState>();
    CudaState& S = *cuda_;
    S.nccl = comm_->works_on_device() ? comm_ : nullptr;
    CHECK(S.nccl != nullptr || ep_size_ == 1)
        << name_ << ": the CUDA path with ep_size " << ep_size_
        << " needs a device-memory communicator (NCCL); this one works on host memory";
    S.stream = S.nccl != nullptr ? static_cast<cudaStream_t>(S.nccl->device_stream()) : nullptr;
    for (cudaEvent_t* e : {&S.routed, &S.enter, &S.leave, &S.downloaded, &S.uploaded})
      CUDA_CHECK(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
  }
  CudaState& S = *cuda_;
  const cudaStream_t s = S.stream;
  S.EnterFromLegacyStream();  // x was produced there
  routing_.reset();
  // Drop the last step's buffers (stream-ordered frees on the layer's stream).
  S.have_forward = false;
  S.noisy = {};
  S.probs_clean = {};
  S.order = {};
  S.recv_block_rows_exchanged = {};
  S.d_probs_aux = {};
  S.d_logits_extra = {};
  S.have_aux_grads = false;
  S.router_in = {};
  S.dgate = {};

  const bool on_device = RoutesOnDevice();
  S.host_routed = !on_device;
  const int E = opt_.num_experts, k = opt_.top_k, El = experts_per_rank_, EP = ep_size_;
  const int64_t n = opt_.group_tokens, D = opt_.dim;
  const int64_t rows = x.dim(0), G = rows / n;
  const float sigma = opt_.noise_scale / E;
  const bool noisy = ctx_.training && sigma > 0.f;
  const int64_t capacity = CurrentCapacity();
  S.rows = rows;
  S.groups = G;
  S.x = x;
  S.kc = k;  // the device router's plan; RouteOnHostForCuda sets its own

  // Which router arrays the auxiliary losses read on the host (as Route computes them).
  const bool aux_importance = ctx_.training && opt_.importance_weight > 0;
  const bool aux_load = ctx_.training && opt_.load_weight > 0 && sigma > 0;
  const bool aux_switch = ctx_.training && opt_.switch_weight > 0;
  const bool aux_z = ctx_.training && opt_.z_weight > 0;

  // ---- the other rules: decided on the host, plan uploaded (moe_layer_cuda_host_route.cc) ----
  if (!on_device) {
    DevicePhase ph(ctx_.profiler, "router", s);
    RouteOnHostForCuda(x);
  }

  // ---- device router (token top-k): logits, noise, softmax, top-k, slots, send layout ----
  const int64_t* counts_host = nullptr;
  const int64_t* recv_block_rows_host = nullptr;
  const float *clean_host = nullptr, *noisy_host = nullptr, *probs_host = nullptr,
              *probs_clean_host = nullptr;
  if (on_device) {
    DevicePhase ph(ctx_.profiler, "router", s);
    S.clean = DeviceArray<float>(rows * E, s);
    CudaSgemm(false, false, rows, E, D, 1.f, x.data(), D, router_.value.data(), E, 0.f,
              S.clean.get(), E, s);
    const float* noisy_logits = S.clean.get();
    if (noisy) {
      // The CPU's key: (layer, step) here, (global group, token * E + expert) per draw.
      const uint64_t key = MixKey(MixKey(seed_, HashString(name_ + ".router_noise")), ctx_.step);
      S.noisy = DeviceArray<float>(rows * E, s);
      AddRouterNoiseCuda(S.clean.get(), S.noisy.get(), G, n, E, sigma, key,
                         ctx_.first_global_group, s);
      noisy_logits = S.noisy.get();
    }
    S.probs = DeviceArray<float>(rows * E, s);
    SoftmaxRowsCuda(noisy_logits, rows, E, S.probs.get(), s);
    S.probs_clean_ptr = S.probs.get();
    if (noisy) {
      S.probs_clean = DeviceArray<float>(rows * E, s);
      SoftmaxRowsCuda(S.clean.get(), rows, E, S.probs_clean.get(), s);
      S.probs_clean_ptr = S.probs_clean.get();
    }
    S.expert = DeviceArray<int>(rows * k, s);
    S.gate = DeviceArray<float>(rows * k, s);
    TopKRowsCuda(S.probs.get(), rows, E, k, S.expert.get(), S.gate.get(), s);
    if (opt_.batch_prioritized) {
      S.order = DeviceArray<int>(rows, s);
      BatchPrioritizedOrderCuda(S.gate.get(), G, n, k, S.order.get(), s);
    }
    S.slot = DeviceArray<int>(rows * k, s);
    S.counts = DeviceArray<int64_t>(G * E, s);
    AssignSlotsCuda(S.expert.get(), S.order.get(), G, n, k, E, capacity, S.slot.get(),
                    S.counts.get(), s);
    S.block_rows = DeviceArray<int64_t>(E * G, s);
    S.block_offset = DeviceArray<int64_t>(E * G, s);
    SendLayoutCuda(S.counts.get(), G, E, capacity, S.block_rows.get(), S.block_offset.get(),
                   nullptr, s);

    // Receive-side block sizes [src][local expert][group]: all C with a capacity (E*G of them,
    // like block_rows, so block_rows serves), exchanged when dropless. Each peer's part of
    // block_rows, [l][g] for experts p*El + l, is contiguous: a fixed-size int64 all-to-all.
    S.recv_block_rows = S.block_rows.get();
    if (opt_.dropless) {
      S.recv_block_rows_exchanged = DeviceArray<int64_t>(E * G, s);
      if (S.nccl != nullptr) {
        S.nccl->AllToAllInt64(S.block_rows.get(), S.recv_block_rows_exchanged.get(), El * G,
                              GroupKind::kExpert);
      } else {
        CUDA_CHECK(cudaMemcpyAsync(S.recv_block_rows_exchanged.get(), S.block_rows.get(),
                                   E * G * sizeof(int64_t), cudaMemcpyDeviceToDevice, s));
      }
      S.recv_block_rows = S.recv_block_rows_exchanged.get();
    }

    // Device -> host: counts, the exchanged sizes (dropless) and the router arrays the
    // auxiliary losses read, into one pinned buffer, then one event. Without noise some of
    // those arrays are one device buffer: each distinct buffer is copied once.
    const size_t fbytes = rows * E * sizeof(float);
    const float* want[4] = {aux_load ? S.clean.get() : nullptr,
                            (aux_load || aux_z) ? noisy_logits : nullptr,
                            aux_switch ? S.probs.get() : nullptr,
                            aux_importance ? S.probs_clean_ptr : nullptr};
    std::vector<std::pair<const void*, size_t>> down;  // (device source, bytes), in order
    down.emplace_back(S.counts.get(), G * E * sizeof(int64_t));
    if (opt_.dropless) down.emplace_back(S.recv_block_rows, E * G * sizeof(int64_t));
    int slot_of[4] = {-1, -1, -1, -1};
    for (int a = 0; a < 4; ++a) {
      if (want[a] == nullptr) continue;
      for (size_t j = 0; j < down.size(); ++j)
        if (down[j].first == want[a]) slot_of[a] = static_cast<int>(j);
      if (slot_of[a] < 0) {
        slot_of[a] = static_cast<int>(down.size());
        down.emplace_back(want[a], fbytes);
      }
    }
    auto padded = [](size_t b) { return (b + 15) / 16 * 16; };
    size_t total = 0;
    for (auto& d : down) total += padded(d.second);
    char* host = S.down.Reserve(total, s);
    std::vector<char*> where;
    for (auto& d : down) {
      CUDA_CHECK(cudaMemcpyAsync(host, d.first, d.second, cudaMemcpyDeviceToHost, s));
      where.push_back(host);
      host += padded(d.second);
    }
    CUDA_CHECK(cudaEventRecord(S.routed, s));
    counts_host = reinterpret_cast<const int64_t*>(where[0]);
    if (opt_.dropless) recv_block_rows_host = reinterpret_cast<const int64_t*>(where[1]);
    const float** host_of[4] = {&clean_host, &noisy_host, &probs_host, &probs_clean_host};
    for (int a = 0; a < 4; ++a)
      if (slot_of[a] >= 0) *host_of[a] = reinterpret_cast<const float*>(where[slot_of[a]]);
  }
  bool waited = false;
  if (on_device) {
    if (opt_.dropless) {
      CUDA_CHECK(cudaEventSynchronize(S.routed));  // sizes decide the all-to-all and the GEMMs
      waited = true;
    }
    // Block sizes on the host: C, or the counts ([g*E + e] -> send order e*G + g) and the
    // exchanged sizes when dropless.
    S.block_rows_host.assign(E * G, capacity);
    S.recv_block_rows_host.assign(E * G, capacity);
    if (capacity < 0) {
      for (int e = 0; e < E; ++e)
        for (int64_t g = 0; g < G; ++g) S.block_rows_host[e * G + g] = counts_host[g * E + e];
      S.recv_block_rows_host.assign(recv_block_rows_host, recv_block_rows_host + E * G);
    }
  }

  // ---- send/receive layout on the host (as BuildSendLayout) ----
  S.send_rows_per_peer.assign(EP, 0);
  S.recv_rows_per_peer.assign(EP, 0);
  S.expert_rows.assign(El, 0);
  S.send_rows = 0;
  for (int e = 0; e < E; ++e)
    for (int64_t g = 0; g < G; ++g) {
      const int64_t r = S.block_rows_host[e * G + g];
      S.send_rows_per_peer[e / El] += r;
      S.send_rows += r;
    }
  S.recv_rows = 0;
  for (int p = 0; p < EP; ++p)
    for (int l = 0; l < El; ++l)
      for (int64_t g = 0; g < G; ++g) {
        const int64_t r = S.recv_block_rows_host[(static_cast<int64_t>(p) * El + l) * G + g];
        S.recv_rows_per_peer[p] += r;
        S.expert_rows[l] += r;
        S.recv_rows += r;
      }

  // ---- dispatch: maps, pack, all-to-all, expert-major ----
  DeviceArray<float> send;
  {
    DevicePhase ph(ctx_.profiler, "dispatch_pack", s);
    // kc choices per row: top_k, or E with slot -1 for "not taken" (expert-side rules); the
    // kernels skip a choice with slot -1 whatever kc is.
    S.choice_row = DeviceArray<int>(rows * S.kc, s);
    S.row_choice = DeviceArray<int>(S.send_rows, s);
    BuildDispatchMapsCuda(S.expert.get(), S.slot.get(), S.block_offset.get(), rows, S.kc, n, E,
                          S.send_rows, S.choice_row.get(), S.row_choice.get(), s);
    send = DeviceArray<float>(S.send_rows * D, s);  // padding rows are written as zeros
    DispatchPackCuda(x.data(), S.row_choice.get(), S.send_rows, S.kc, D, send.get(), s);
  }
  Tensor expert_in = NewDeviceTensor({S.recv_rows, D}, s);
  {
    DevicePhase ph(ctx_.profiler, "a2a_dispatch", s, S.send_rows * D * sizeof(float));
    DeviceArray<float> received(S.recv_rows * D, s);
    DeviceAllToAllV(S.nccl, s, send.get(), S.send_rows_per_peer, received.get(),
                    S.recv_rows_per_peer, D);
    PermuteBlocksCuda(received.get(), expert_in.data(), D, S.recv_block_rows, EP, El, G,
                      S.recv_rows, /*to_expert_major=*/true, s);
  }
  send = {};

  // ---- experts ----
  Tensor expert_out;
  {
    DevicePhase ph(ctx_.profiler, "experts", s);
    experts_->set_cuda_stream(s);
    expert_out = experts_->Forward(expert_in, S.expert_rows);
  }

  // ---- back to the source ranks, combine ----
  {
    DevicePhase ph(ctx_.profiler, "a2a_combine", s, expert_out.numel() * sizeof(float));
    DeviceArray<float> src_major(S.recv_rows * D, s);
    PermuteBlocksCuda(expert_out.data(), src_major.get(), D, S.recv_block_rows, EP, El, G,
                      S.recv_rows, /*to_expert_major=*/false, s);
    S.returned = DeviceArray<float>(S.send_rows * D, s);
    DeviceAllToAllV(S.nccl, s, src_major.get(), S.recv_rows_per_peer, S.returned.get(),
                    S.send_rows_per_peer, D);
  }
  Tensor y = NewDeviceTensor({rows, D}, s);
  {
    DevicePhase ph(ctx_.profiler, "combine", s);
    CombineCuda(S.returned.get(), S.choice_row.get(), S.gate.get(), rows, S.kc, D, y.data(), s);
  }

  // ---- device router: metrics and auxiliary losses on the host, while the device works ----
  if (on_device) {
    ScopedPhase ph(ctx_.profiler, "router_host");
    if (!waited) CUDA_CHECK(cudaEventSynchronize(S.routed));
    metrics_ = MoeMetrics();
    metrics_.tokens_per_expert.assign(E, 0);
    for (int64_t g = 0; g < G; ++g) {
      int64_t kept = 0;
      for (int e = 0; e < E; ++e) {
        metrics_.tokens_per_expert[e] += counts_host[g * E + e];
        kept += counts_host[g * E + e];
      }
      metrics_.dropped += n * k - kept;
    }
    metrics_.assignments = rows * k;
    metrics_.capacity_slots = capacity < 0 ? 0 : capacity * E * G;

    if (aux_importance || aux_load || aux_switch || aux_z) {
      const int64_t m = rows * E;
      float* up = reinterpret_cast<float*>(S.up.Reserve(2 * m * sizeof(float), s));
      float* d_probs_aux = up;         // [rows, E]
      float* d_logits_extra = up + m;  // [rows, E]
      std::fill(up, up + 2 * m, 0.f);
      std::vector<float> d_probs_clean_aux(aux_importance ? m : 0, 0.f);
      std::vector<float> d_logits_aux(m, 0.f), d_clean_logits_aux(m, 0.f);
      const float per_group = 1.f / static_cast<float>(ctx_.num_global_groups);
      for (int64_t g = 0; g < G; ++g) {
        const int64_t o = g * n * E;
        if (aux_importance) {
          const double l = ImportanceLoss(probs_clean_host + o, n, E,
                                          opt_.importance_weight * per_group,
                                          d_probs_clean_aux.data() + o);
          metrics_.importance_loss += l;
          metrics_.aux_loss += opt_.importance_weight * per_group * l;
        }
        if (aux_load) {
          const double l = LoadLoss(clean_host + o, noisy_host + o, n, E, k, sigma,
                                    opt_.load_weight * per_group, d_clean_logits_aux.data() + o);
          metrics_.load_loss += l;
          metrics_.aux_loss += opt_.load_weight * per_group * l;
        }
        if (aux_switch) {
          const double l = SwitchLoss(probs_host + o, n, E, opt_.switch_weight * per_group,
                                      d_probs_aux + o);
          metrics_.switch_loss += l;
          metrics_.aux_loss += opt_.switch_weight * per_group * l;
        }
        if (aux_z) {
          const double l = ZLoss(noisy_host + o, n, E, opt_.z_weight * per_group,
                                 d_logits_aux.data() + o);
          metrics_.z_loss += l;
          metrics_.aux_loss += opt_.z_weight * per_group * l;
        }
      }
      std::vector<float> d_from_clean_probs(m, 0.f);
      if (aux_importance)
        SoftmaxRowsBackward(probs_clean_host, d_probs_clean_aux.data(), rows, E,
                            d_from_clean_probs.data());
      for (int64_t i = 0; i < m; ++i)
        d_logits_extra[i] = d_logits_aux[i] + d_from_clean_probs[i] + d_clean_logits_aux[i];
      S.d_probs_aux = DeviceArray<float>(m, s, /*poison=*/false);
      S.d_logits_extra = DeviceArray<float>(m, s, /*poison=*/false);
      CUDA_CHECK(cudaMemcpyAsync(S.d_probs_aux.get(), d_probs_aux, m * sizeof(float),
                                 cudaMemcpyHostToDevice, s));
      CUDA_CHECK(cudaMemcpyAsync(S.d_logits_extra.get(), d_logits_extra, m * sizeof(float),
                                 cudaMemcpyHostToDevice, s));
      S.have_aux_grads = true;
    }
  }
  S.have_forward = true;
  S.LeaveToLegacyStream();
  return y;  // expert_in, expert_out released after the Leave above: stream-ordered
}

Tensor MoeLayer::BackwardCuda(const Tensor& dy) {
  CHECK(cuda_ && cuda_->have_forward) << name_ << ": Backward before Forward";
  CudaState& S = *cuda_;
  CHECK_EQ(dy.numel(), S.rows * opt_.dim) << name_ << ": dy shape";
  const cudaStream_t s = S.stream;
  S.EnterFromLegacyStream();  // dy was produced there
  const int kc = S.kc, E = opt_.num_experts, El = experts_per_rank_, EP = ep_size_;
  const int64_t D = opt_.dim, rows = S.rows, G = S.groups, m = rows * E;

  // combine backward: d(expert output) = gate * dy, and <dy, expert output> per kept choice:
  //   device router: added into d(probs) [rows, E] (with the aux part) for the device softmax
  //                  backward;
  //   host-decided rules: kept per choice, d(gate) [rows * kc], and copied to the host, where
  //                  the rule's router backward runs. The copy is only waited for at the router
  //                  step, after the expert backward has been enqueued.
  DeviceArray<float> d_probs;
  DeviceArray<float> d_returned(S.send_rows * D, s);
  const float* dgate_host = nullptr;
  {
    DevicePhase ph(ctx_.profiler, "combine_bwd", s);
    if (S.host_routed) {
      S.dgate = DeviceArray<float>(rows * kc, s);
      CombineBackwardCuda(dy.data(), S.returned.get(), S.gate.get(), S.expert.get(),
                          S.choice_row.get(), S.row_choice.get(), rows, kc, E, S.send_rows, D,
                          d_returned.get(), S.dgate.get(), /*d_probs=*/nullptr, s);
      dgate_host = reinterpret_cast<const float*>(
          S.Download({{S.dgate.get(), rows * kc * sizeof(float)}}, /*wait=*/false)[0]);
    } else {
      d_probs = DeviceArray<float>(m, s, /*poison=*/false);
      if (S.have_aux_grads) {
        CUDA_CHECK(cudaMemcpyAsync(d_probs.get(), S.d_probs_aux.get(), m * sizeof(float),
                                   cudaMemcpyDeviceToDevice, s));
      } else {
        d_probs.Zero();
      }
      CombineBackwardCuda(dy.data(), S.returned.get(), S.gate.get(), S.expert.get(),
                          S.choice_row.get(), S.row_choice.get(), rows, kc, E, S.send_rows, D,
                          d_returned.get(), /*dgate=*/nullptr, d_probs.get(), s);
    }
  }
  Tensor d_expert_out = NewDeviceTensor({S.recv_rows, D}, s);
  {
    DevicePhase ph(ctx_.profiler, "a2a_combine_bwd", s, S.send_rows * D * sizeof(float));
    DeviceArray<float> received(S.recv_rows * D, s);
    DeviceAllToAllV(S.nccl, s, d_returned.get(), S.send_rows_per_peer, received.get(),
                    S.recv_rows_per_peer, D);
    PermuteBlocksCuda(received.get(), d_expert_out.data(), D, S.recv_block_rows, EP, El, G,
                      S.recv_rows, /*to_expert_major=*/true, s);
  }
  d_returned = {};
  Tensor d_expert_in;
  {
    DevicePhase ph(ctx_.profiler, "experts_bwd", s);
    experts_->set_cuda_stream(s);
    d_expert_in = experts_->Backward(d_expert_out);
  }
  DeviceArray<float> d_send(S.send_rows * D, s);
  {
    DevicePhase ph(ctx_.profiler, "a2a_dispatch_bwd", s, d_expert_in.numel() * sizeof(float));
    DeviceArray<float> src_major(S.recv_rows * D, s);
    PermuteBlocksCuda(d_expert_in.data(), src_major.get(), D, S.recv_block_rows, EP, El, G,
                      S.recv_rows, /*to_expert_major=*/false, s);
    DeviceAllToAllV(S.nccl, s, src_major.get(), S.recv_rows_per_peer, d_send.get(),
                    S.send_rows_per_peer, D);
  }
  Tensor dx = NewDeviceTensor({rows, D}, s);
  {
    DevicePhase ph(ctx_.profiler, "dispatch_bwd", s);
    DispatchBackwardCuda(d_send.get(), S.choice_row.get(), rows, kc, D, dx.data(),
                         /*accumulate=*/false, s);
  }
  if (S.host_routed) {
    DevicePhase ph(ctx_.profiler, "router_bwd", s);
    RouterBackwardForCuda(dgate_host, &dx);
  } else {
    DevicePhase ph(ctx_.profiler, "router_bwd", s);
    // probs = softmax(noisy logits), noisy = clean + eps: d/dclean of the noisy path is 1.
    DeviceArray<float> d_clean(m, s);
    SoftmaxRowsBackwardCuda(S.probs.get(), d_probs.get(), rows, E, d_clean.get(), s);
    if (S.have_aux_grads) AddInPlaceCuda(d_clean.get(), S.d_logits_extra.get(), m, s);
    CudaSgemm(true, false, D, E, rows, 1.f, S.x.data(), D, d_clean.get(), E, 1.f,
              router_.grad.data(), E, s);
    CudaSgemm(false, true, rows, D, E, 1.f, d_clean.get(), E, router_.value.data(), E, 1.f,
              dx.data(), D, s);
  }
  S.LeaveToLegacyStream();
  return dx;  // d_expert_out, d_expert_in released after the Leave above: stream-ordered
}

}  // namespace moe

#endif  // MOE_EP_HAS_CUDA
