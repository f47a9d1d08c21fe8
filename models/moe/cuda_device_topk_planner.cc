#include "models/moe/cuda_device_topk_planner.h"

#include <cuda_runtime_api.h>
#include <glog/logging.h>

#include <algorithm>
#include <utility>

#include "core/kernels/cuda/cublas_gemm.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/dense_kernels.h"
#include "core/kernels/cuda/moe_routing_kernels.h"
#include "models/moe/aux_losses.h"
#include "models/moe/router_math.h"

namespace moe {

using moe_cuda::DeviceArray;
using moe_cuda::DevicePhase;

CudaDeviceTopKPlanner::CudaDeviceTopKPlanner(const MoeLayerView& layer,
                                             std::shared_ptr<CudaMoeContext> cuda)
    : L_(layer), cuda_(std::move(cuda)) {}

const DispatchPlan& CudaDeviceTopKPlanner::Plan(const Tensor& x) {
  const MoeLayerOptions& o = L_.opt;
  const MoeStepContext& ctx = L_.ctx;
  // Drop the last step's buffers (stream-ordered frees on the layer's stream).
  noisy_ = {};
  probs_clean_ = {};
  order_ = {};
  recv_block_rows_ = {};
  d_probs_aux_ = {};
  d_logits_extra_ = {};
  have_aux_grads_ = false;
  waited_ = false;
  x_ = x;
  step_ = Step();
  step_.rows = x.dim(0);
  step_.groups = step_.rows / o.group_tokens;
  step_.capacity = L_.Capacity();
  step_.sigma = o.noise_scale / o.num_experts;
  step_.noisy = ctx.training && step_.sigma > 0.f;
  step_.importance = ctx.training && o.importance_weight > 0;
  step_.load = ctx.training && o.load_weight > 0 && step_.sigma > 0;
  step_.switch_loss = ctx.training && o.switch_weight > 0;
  step_.z = ctx.training && o.z_weight > 0;
  L_.metrics = MoeMetrics();
  L_.metrics.tokens_per_expert.assign(o.num_experts, 0);
  {
    DevicePhase ph(cuda_->profiler, "router", cuda_->stream);
    RouteOnDevice(x);
    ExchangeDroplessSizes();
    DownloadRoutingArrays();
  }
  BlockSizesOnHost();
  return plan_;
}

// Logits, noise, softmax, top-k, BPR order, slots and the send layout, all on the device.
void CudaDeviceTopKPlanner::RouteOnDevice(const Tensor& x) {
  const cudaStream_t s = cuda_->stream;
  const int E = L_.opt.num_experts, k = L_.opt.top_k;
  const int64_t n = L_.opt.group_tokens, D = L_.opt.dim, rows = step_.rows, G = step_.groups;
  clean_ = DeviceArray<float>(rows * E, s);
  CudaSgemm(false, false, rows, E, D, 1.f, x.data(), D, L_.router.weight().value.data(), E, 0.f,
            clean_.get(), E, s);
  noisy_logits_ = clean_.get();
  if (step_.noisy) {
    noisy_ = DeviceArray<float>(rows * E, s);
    AddRouterNoiseCuda(clean_.get(), noisy_.get(), G, n, E, step_.sigma,
                       RouterNoiseKey(L_.seed, L_.name, L_.ctx.step),
                       L_.ctx.first_global_group, s);
    noisy_logits_ = noisy_.get();
  }
  probs_ = DeviceArray<float>(rows * E, s);
  SoftmaxRowsCuda(noisy_logits_, rows, E, probs_.get(), s);
  probs_clean_ptr_ = probs_.get();
  if (step_.noisy) {
    probs_clean_ = DeviceArray<float>(rows * E, s);
    SoftmaxRowsCuda(clean_.get(), rows, E, probs_clean_.get(), s);
    probs_clean_ptr_ = probs_clean_.get();
  }
  expert_ = DeviceArray<int>(rows * k, s);
  gate_ = DeviceArray<float>(rows * k, s);
  TopKRowsCuda(probs_.get(), rows, E, k, expert_.get(), gate_.get(), s);
  if (L_.opt.batch_prioritized) {
    order_ = DeviceArray<int>(rows, s);
    BatchPrioritizedOrderCuda(gate_.get(), G, n, k, order_.get(), s);
  }
  slot_ = DeviceArray<int>(rows * k, s);
  counts_ = DeviceArray<int64_t>(G * E, s);
  AssignSlotsCuda(expert_.get(), order_.get(), G, n, k, E, step_.capacity, slot_.get(),
                  counts_.get(), s);
  block_rows_ = DeviceArray<int64_t>(E * G, s);
  block_offset_ = DeviceArray<int64_t>(E * G, s);
  SendLayoutCuda(counts_.get(), G, E, step_.capacity, block_rows_.get(), block_offset_.get(),
                 nullptr, s);
}

// Receive-side block sizes [src][local expert][group]: all C with a capacity (E*G of them, like
// block_rows, so block_rows serves), exchanged when dropless. Each peer's part of block_rows,
// [l][g] for experts p*El + l, is contiguous: a fixed-size int64 all-to-all.
void CudaDeviceTopKPlanner::ExchangeDroplessSizes() {
  const cudaStream_t s = cuda_->stream;
  const int E = L_.opt.num_experts;
  const int64_t G = step_.groups, El = E / L_.comm->Size(GroupKind::kExpert);
  recv_block_rows_device_ = block_rows_.get();
  if (!L_.opt.dropless) return;
  recv_block_rows_ = DeviceArray<int64_t>(E * G, s);
  if (cuda_->nccl != nullptr) {
    cuda_->nccl->AllToAllInt64(block_rows_.get(), recv_block_rows_.get(), El * G,
                               GroupKind::kExpert);
  } else {
    CUDA_CHECK(cudaMemcpyAsync(recv_block_rows_.get(), block_rows_.get(), E * G * sizeof(int64_t),
                               cudaMemcpyDeviceToDevice, s));
  }
  recv_block_rows_device_ = recv_block_rows_.get();
}

// Device -> host: counts, the exchanged sizes (dropless) and the router arrays the auxiliary
// losses read, into one pinned buffer, then one event. Without noise some of those arrays are
// one device buffer: each distinct buffer is copied once.
void CudaDeviceTopKPlanner::DownloadRoutingArrays() {
  const cudaStream_t s = cuda_->stream;
  const int64_t E = L_.opt.num_experts, G = step_.groups;
  const size_t fbytes = step_.rows * E * sizeof(float);
  const float* want[4] = {step_.load ? clean_.get() : nullptr,
                          (step_.load || step_.z) ? noisy_logits_ : nullptr,
                          step_.switch_loss ? probs_.get() : nullptr,
                          step_.importance ? probs_clean_ptr_ : nullptr};
  std::vector<std::pair<const void*, size_t>> down;  // (device source, bytes), in order
  down.emplace_back(counts_.get(), G * E * sizeof(int64_t));
  if (L_.opt.dropless) down.emplace_back(recv_block_rows_device_, E * G * sizeof(int64_t));
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
  size_t total = 0;
  for (auto& d : down) total += CudaMoeContext::Padded(d.second);
  char* host = cuda_->down.Reserve(total, s);
  std::vector<char*> where;
  for (auto& d : down) {
    CUDA_CHECK(cudaMemcpyAsync(host, d.first, d.second, cudaMemcpyDeviceToHost, s));
    where.push_back(host);
    host += CudaMoeContext::Padded(d.second);
  }
  CUDA_CHECK(cudaEventRecord(cuda_->routed, s));
  counts_host_ = reinterpret_cast<const int64_t*>(where[0]);
  recv_block_rows_host_ =
      L_.opt.dropless ? reinterpret_cast<const int64_t*>(where[1]) : nullptr;
  const float** host_of[4] = {&clean_host_, &noisy_host_, &probs_host_, &probs_clean_host_};
  for (int a = 0; a < 4; ++a)
    *host_of[a] = slot_of[a] >= 0 ? reinterpret_cast<const float*>(where[slot_of[a]]) : nullptr;
}

// Block sizes on the host: C, or (dropless, after waiting for the routing event) the counts
// ([g*E + e] -> send order e*G + g) and the exchanged sizes.
void CudaDeviceTopKPlanner::BlockSizesOnHost() {
  const int E = L_.opt.num_experts;
  const int64_t G = step_.groups, C = step_.capacity;
  plan_ = DispatchPlan();
  plan_.block_rows.assign(E * G, C);
  plan_.recv_block_rows.assign(E * G, C);
  if (L_.opt.dropless) {
    CUDA_CHECK(cudaEventSynchronize(cuda_->routed));  // sizes decide the all-to-all and the GEMMs
    waited_ = true;
    for (int e = 0; e < E; ++e)
      for (int64_t g = 0; g < G; ++g) plan_.block_rows[e * G + g] = counts_host_[g * E + e];
    plan_.recv_block_rows.assign(recv_block_rows_host_, recv_block_rows_host_ + E * G);
  }
  plan_.rows = step_.rows;
  plan_.groups = G;
  plan_.group_tokens = L_.opt.group_tokens;
  plan_.kc = L_.opt.top_k;
  plan_.capacity = C;
  plan_.expert = expert_.get();
  plan_.slot = slot_.get();
  plan_.gate = gate_.get();
  plan_.block_offset_device = block_offset_.get();
  plan_.recv_block_rows_device = recv_block_rows_device_;
}

// The metrics and auxiliary losses on the host, while the device runs the dispatch, experts and
// combine enqueued before.
void CudaDeviceTopKPlanner::FinishForward() {
  ScopedPhase ph(cuda_->profiler, "router_host");
  if (!waited_) CUDA_CHECK(cudaEventSynchronize(cuda_->routed));
  CountMetrics();
  if (step_.AnyAux()) AuxLossesOnHost();
}

void CudaDeviceTopKPlanner::CountMetrics() {
  MoeMetrics& m = L_.metrics;
  const int E = L_.opt.num_experts, k = L_.opt.top_k;
  const int64_t G = step_.groups, n = L_.opt.group_tokens, C = step_.capacity;
  for (int64_t g = 0; g < G; ++g) {
    int64_t kept = 0;
    for (int e = 0; e < E; ++e) {
      m.tokens_per_expert[e] += counts_host_[g * E + e];
      kept += counts_host_[g * E + e];
    }
    m.dropped += n * k - kept;
  }
  m.assignments = step_.rows * k;
  m.capacity_slots = C < 0 ? 0 : C * E * G;
}

void CudaDeviceTopKPlanner::AuxLossesOnHost() {
  const cudaStream_t s = cuda_->stream;
  const MoeLayerOptions& o = L_.opt;
  MoeMetrics& met = L_.metrics;
  const int E = o.num_experts, k = o.top_k;
  const int64_t n = o.group_tokens, rows = step_.rows, m = rows * E;
  float* up = reinterpret_cast<float*>(cuda_->up.Reserve(2 * m * sizeof(float), s));
  float* d_probs_aux = up;         // [rows, E]
  float* d_logits_extra = up + m;  // [rows, E]
  std::fill(up, up + 2 * m, 0.f);
  std::vector<float> d_probs_clean_aux(step_.importance ? m : 0, 0.f);
  std::vector<float> d_logits_aux(m, 0.f), d_clean_logits_aux(m, 0.f);
  const float per_group = 1.f / static_cast<float>(L_.ctx.num_global_groups);
  const auto add = [&](double* which, float weight, double l) {
    *which += l;
    met.aux_loss += weight * per_group * l;
  };
  for (int64_t g = 0; g < step_.groups; ++g) {
    const int64_t off = g * n * E;
    if (step_.importance)
      add(&met.importance_loss, o.importance_weight,
          ImportanceLoss(probs_clean_host_ + off, n, E, o.importance_weight * per_group,
                         d_probs_clean_aux.data() + off));
    if (step_.load)
      add(&met.load_loss, o.load_weight,
          LoadLoss(clean_host_ + off, noisy_host_ + off, n, E, k, step_.sigma,
                   o.load_weight * per_group, d_clean_logits_aux.data() + off));
    if (step_.switch_loss)
      add(&met.switch_loss, o.switch_weight,
          SwitchLoss(probs_host_ + off, n, E, o.switch_weight * per_group, d_probs_aux + off));
    if (step_.z)
      add(&met.z_loss, o.z_weight,
          ZLoss(noisy_host_ + off, n, E, o.z_weight * per_group, d_logits_aux.data() + off));
  }
  std::vector<float> d_from_clean_probs(m, 0.f);
  if (step_.importance)
    SoftmaxRowsBackward(probs_clean_host_, d_probs_clean_aux.data(), rows, E,
                        d_from_clean_probs.data());
  for (int64_t i = 0; i < m; ++i)
    d_logits_extra[i] = d_logits_aux[i] + d_from_clean_probs[i] + d_clean_logits_aux[i];
  d_probs_aux_ = DeviceArray<float>(m, s, /*poison=*/false);
  d_logits_extra_ = DeviceArray<float>(m, s, /*poison=*/false);
  CUDA_CHECK(cudaMemcpyAsync(d_probs_aux_.get(), d_probs_aux, m * sizeof(float),
                             cudaMemcpyHostToDevice, s));
  CUDA_CHECK(cudaMemcpyAsync(d_logits_extra_.get(), d_logits_extra, m * sizeof(float),
                             cudaMemcpyHostToDevice, s));
  have_aux_grads_ = true;
}

// d(probs) starts as the switch loss's gradient; the combine backward adds the gates' share.
GateGradTarget CudaDeviceTopKPlanner::StartBackward() {
  CHECK(x_.numel() > 0) << L_.name << ": Backward before Forward";
  const cudaStream_t s = cuda_->stream;
  const int64_t m = step_.rows * L_.opt.num_experts;
  d_probs_ = DeviceArray<float>(m, s, /*poison=*/false);
  if (have_aux_grads_) {
    CUDA_CHECK(cudaMemcpyAsync(d_probs_.get(), d_probs_aux_.get(), m * sizeof(float),
                               cudaMemcpyDeviceToDevice, s));
  } else {
    d_probs_.Zero();
  }
  GateGradTarget t;
  t.d_probs = d_probs_.get();
  return t;
}

// probs = softmax(noisy logits), noisy = clean + eps: d/dclean of the noisy path is 1.
void CudaDeviceTopKPlanner::Backward(Tensor* dx) {
  const cudaStream_t s = cuda_->stream;
  DevicePhase ph(cuda_->profiler, "router_bwd", s);
  const int64_t E = L_.opt.num_experts, D = L_.opt.dim, rows = step_.rows, m = rows * E;
  Parameter& w = L_.router.weight();
  DeviceArray<float> d_clean(m, s);
  SoftmaxRowsBackwardCuda(probs_.get(), d_probs_.get(), rows, E, d_clean.get(), s);
  if (have_aux_grads_) AddInPlaceCuda(d_clean.get(), d_logits_extra_.get(), m, s);
  CudaSgemm(true, false, D, E, rows, 1.f, x_.data(), D, d_clean.get(), E, 1.f, w.grad.data(), E,
            s);
  CudaSgemm(false, true, rows, D, E, 1.f, d_clean.get(), E, w.value.data(), E, 1.f, dx->data(),
            D, s);
  d_probs_ = {};
}

}  // namespace moe
