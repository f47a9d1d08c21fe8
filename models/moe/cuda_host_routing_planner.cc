#include "models/moe/cuda_host_routing_planner.h"

#include <cuda_runtime_api.h>
#include <glog/logging.h>

#include <cstring>
#include <tuple>
#include <utility>

#include "core/kernels/cuda/cublas_gemm.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/dense_kernels.h"
#include "core/kernels/cuda/moe_image_router_kernels.h"
#include "models/layers/layer_norm.h"
#include "models/layers/linear.h"

namespace moe {

using moe_cuda::DeviceArray;
using moe_cuda::DevicePhase;

namespace {

std::vector<Parameter*> EmbeddingParameters(Layer* proj, Layer* norm) {
  std::vector<Parameter*> ps = proj->Parameters();
  for (Parameter* p : norm->Parameters()) ps.push_back(p);
  return ps;
}

}  // namespace

CudaHostRoutingPlanner::CudaHostRoutingPlanner(const MoeLayerView& layer,
                                               std::shared_ptr<CudaMoeContext> cuda)
    : L_(layer), cuda_(std::move(cuda)) {}

const DispatchPlan& CudaHostRoutingPlanner::Plan(const Tensor& x) {
  DevicePhase ph(cuda_->profiler, "router", cuda_->stream);
  x_ = x;
  // One state reused step after step (its vectors keep their memory); a Backward reads the
  // state of the last Forward, as before.
  if (R_) R_->Reset(); else R_ = std::make_shared<RoutingState>();
  StartRouting(L_, x.dim(0), R_.get());
  if (L_.router.input_kind() == RouterInputKind::kAttributes) {
    AttributeLogitsOnHost(x);
  } else {
    DeviceLogits(x);
  }
  DecideFromLogits(L_, R_.get());  // the CPU path's code from here: same plan, metrics, aux
  UploadPlan();
  ExchangeDroplessSizes();
  return plan_;
}

void CudaHostRoutingPlanner::DeviceLogits(const Tensor& x) {
  const cudaStream_t s = cuda_->stream;
  const int E = L_.opt.num_experts;
  const int64_t D = L_.opt.dim, RR = R_->router_rows;
  const float* in = x.data();
  router_in_ = {};
  if (L_.router.input_kind() == RouterInputKind::kImageMean) {
    router_in_ = DeviceArray<float>(RR * D, s);
    ImageMeanRowsCuda(x.data(), RR, L_.opt.tokens_per_image, D, router_in_.get(), s);
    in = router_in_.get();
  }
  DeviceArray<float> logits(RR * E, s);
  CudaSgemm(false, false, RR, E, D, 1.f, in, D, L_.router.weight().value.data(), E, 0.f,
            logits.get(), E, s);
  const float* got =
      reinterpret_cast<const float*>(cuda_->Download({{logits.get(), RR * E * sizeof(float)}})[0]);
  R_->clean_logits.assign(got, got + RR * E);
}

// One wait for W, the embedding's parameters and (when the router sees it) the token rows.
void CudaHostRoutingPlanner::AttributeLogitsOnHost(const Tensor& x) {
  const MoeLayerOptions& o = L_.opt;
  const int64_t D = o.dim, E = o.num_experts, rows = R_->rows;
  CHECK(L_.ctx.attributes != nullptr)
      << L_.name << ": attribute routing needs the step's attributes";
  CHECK(L_.ctx.attributes->device() == Device::kCPU)
      << L_.name << ": the attributes are host data (MoeStepContext::attributes)";
  if (!attr_proj_host_) {
    // Built as Router builds its embedding (same classes, shapes and LayerNorm eps); the values
    // are overwritten below every step.
    attr_proj_host_ = std::make_unique<Linear>(L_.name + ".router.attr_proj", o.attribute_dim,
                                               o.dim, L_.seed);
    attr_norm_host_ = std::make_unique<LayerNorm>(L_.name + ".router.attr_norm", o.dim, L_.seed);
  }
  const std::vector<Parameter*> dev =
      EmbeddingParameters(L_.router.attr_proj(), L_.router.attr_norm());
  const std::vector<Parameter*> host =
      EmbeddingParameters(attr_proj_host_.get(), attr_norm_host_.get());
  CHECK_EQ(dev.size(), host.size());
  std::vector<std::pair<const void*, size_t>> parts;
  parts.emplace_back(L_.router.weight().value.data(), D * E * sizeof(float));
  for (size_t i = 0; i < dev.size(); ++i) {
    CHECK(dev[i]->value.shape() == host[i]->value.shape()) << dev[i]->name;
    parts.emplace_back(dev[i]->value.data(), dev[i]->value.numel() * sizeof(float));
  }
  if (o.attribute_with_token) parts.emplace_back(x.data(), rows * D * sizeof(float));
  const std::vector<const char*> got = cuda_->Download(parts);
  const float* w = reinterpret_cast<const float*>(got[0]);
  w_host_.assign(w, w + D * E);
  for (size_t i = 0; i < dev.size(); ++i)
    std::memcpy(host[i]->value.data(), got[1 + i], parts[1 + i].second);
  Tensor x_host;
  if (o.attribute_with_token) {
    x_host = Tensor({rows, D});
    std::memcpy(x_host.data(), got.back(), parts.back().second);
  }
  L_.router.SetInput(x_host, L_.ctx, attr_proj_host_.get(), attr_norm_host_.get(), R_.get());
  L_.router.Logits(w_host_.data(), R_.get());
}

// The plan and the send-block sizes and offsets go up in one batch of copies.
void CudaHostRoutingPlanner::UploadPlan() {
  const cudaStream_t s = cuda_->stream;
  const RoutingState& R = *R_;
  const int64_t nc = R.rows * R.kc, EG = int64_t{L_.opt.num_experts} * R.groups;
  std::vector<int64_t> block_offset(EG);
  int64_t off = 0;
  for (int64_t b = 0; b < EG; ++b) {
    block_offset[b] = off;
    off += R.block_rows[b];
  }
  expert_ = DeviceArray<int>(nc, s, /*poison=*/false);
  slot_ = DeviceArray<int>(nc, s, /*poison=*/false);
  gate_ = DeviceArray<float>(nc, s, /*poison=*/false);
  block_rows_ = DeviceArray<int64_t>(EG, s, /*poison=*/false);
  block_offset_ = DeviceArray<int64_t>(EG, s, /*poison=*/false);
  cuda_->Upload({{expert_.get(), R.expert.data(), nc * sizeof(int)},
                 {slot_.get(), R.slot.data(), nc * sizeof(int)},
                 {gate_.get(), R.gate.data(), nc * sizeof(float)},
                 {block_rows_.get(), R.block_rows.data(), EG * sizeof(int64_t)},
                 {block_offset_.get(), block_offset.data(), EG * sizeof(int64_t)}});
  plan_ = DispatchPlan();
  plan_.rows = R.rows;
  plan_.groups = R.groups;
  plan_.group_tokens = L_.opt.group_tokens;
  plan_.kc = R.kc;
  plan_.capacity = L_.Capacity();
  plan_.expert = expert_.get();
  plan_.slot = slot_.get();
  plan_.gate = gate_.get();
  plan_.block_rows = R.block_rows;
  plan_.block_offset_device = block_offset_.get();
}

// Received sizes [src][local expert][group]: all C with a capacity, so the send sizes serve (E*G
// of them either way); dropless exchanges them over the device communicator and brings them
// back, since they size the all-to-all and the expert GEMMs. With one EP rank and no device
// communicator the receiver is this rank: the sizes as sent.
void CudaHostRoutingPlanner::ExchangeDroplessSizes() {
  const int E = L_.opt.num_experts;
  const int64_t G = R_->groups, El = E / L_.comm->Size(GroupKind::kExpert);
  plan_.recv_block_rows_device = block_rows_.get();
  plan_.recv_block_rows = R_->block_rows;
  recv_block_rows_ = {};
  if (!L_.opt.dropless || cuda_->nccl == nullptr) return;
  recv_block_rows_ = DeviceArray<int64_t>(E * G, cuda_->stream);
  cuda_->nccl->AllToAllInt64(block_rows_.get(), recv_block_rows_.get(), El * G,
                             GroupKind::kExpert);
  plan_.recv_block_rows_device = recv_block_rows_.get();
  const int64_t* got = reinterpret_cast<const int64_t*>(
      cuda_->Download({{recv_block_rows_.get(), E * G * sizeof(int64_t)}})[0]);
  plan_.recv_block_rows.assign(got, got + E * G);
}

GateGradTarget CudaHostRoutingPlanner::StartBackward() {
  CHECK(R_) << L_.name << ": no host-decided routing to backpropagate";
  const int64_t n = R_->rows * R_->kc;
  dgate_ = DeviceArray<float>(n, cuda_->stream);
  GateGradTarget t;
  t.d_gate = dgate_.get();
  // Copied down while the all-to-all and the expert backward run; waited for in Backward.
  t.on_written = [this, n] {
    dgate_host_ = reinterpret_cast<const float*>(
        cuda_->Download({{dgate_.get(), n * sizeof(float)}}, /*wait=*/false)[0]);
  };
  return t;
}

void CudaHostRoutingPlanner::Backward(Tensor* dx) {
  DevicePhase ph(cuda_->profiler, "router_bwd", cuda_->stream);
  cuda_->WaitDownload();
  const std::vector<float> d_gate(dgate_host_, dgate_host_ + R_->rows * R_->kc);
  const std::vector<float> d_clean = CleanLogitsGradOnHost(L_, d_gate, R_.get());
  if (L_.router.input_kind() == RouterInputKind::kAttributes) {
    AttributeBackward(d_clean, dx);
  } else {
    DeviceRouterBackward(d_clean, dx);
  }
}

// The host copies hold this step's gradients alone (zeroed first); the device gradients
// accumulate them, as Backward's contract says.
void CudaHostRoutingPlanner::AttributeBackward(const std::vector<float>& d_clean, Tensor* dx) {
  const cudaStream_t s = cuda_->stream;
  const int64_t D = L_.opt.dim, E = L_.opt.num_experts, rows = R_->rows, RR = R_->router_rows;
  const std::vector<Parameter*> dev =
      EmbeddingParameters(L_.router.attr_proj(), L_.router.attr_norm());
  const std::vector<Parameter*> host =
      EmbeddingParameters(attr_proj_host_.get(), attr_norm_host_.get());
  for (Parameter* p : host) p->grad.Zero();
  std::vector<float> dw(D * E, 0.f);
  L_.router.ApplyGrad(*R_, d_clean, w_host_.data(), dw.data(), /*dx=*/nullptr,
                      attr_proj_host_.get(), attr_norm_host_.get());
  // One upload: [dW | each embedding gradient | d_clean (with the token)], then one add each.
  std::vector<std::pair<float*, int64_t>> adds{{L_.router.weight().grad.data(), D * E}};
  for (Parameter* p : dev) adds.emplace_back(p->grad.data(), p->grad.numel());
  int64_t total = 0;
  for (const auto& a : adds) total += a.second;
  const int64_t d_clean_at = total;
  if (L_.opt.attribute_with_token) total += RR * E;
  DeviceArray<float> up(total, s, /*poison=*/false);
  std::vector<std::tuple<void*, const void*, size_t>> parts{
      {up.get(), dw.data(), D * E * sizeof(float)}};
  int64_t at = D * E;
  for (Parameter* p : host) {
    parts.emplace_back(up.get() + at, p->grad.data(), p->grad.numel() * sizeof(float));
    at += p->grad.numel();
  }
  if (L_.opt.attribute_with_token)
    parts.emplace_back(up.get() + d_clean_at, d_clean.data(), RR * E * sizeof(float));
  cuda_->Upload(parts);
  at = 0;
  for (const auto& a : adds) {
    AddInPlaceCuda(a.first, up.get() + at, a.second, s);
    at += a.second;
  }
  if (L_.opt.attribute_with_token)
    CudaSgemm(false, true, rows, D, E, 1.f, up.get() + d_clean_at, E,
              L_.router.weight().value.data(), E, 1.f, dx->data(), D, s);
}

void CudaHostRoutingPlanner::DeviceRouterBackward(const std::vector<float>& d_clean, Tensor* dx) {
  const cudaStream_t s = cuda_->stream;
  const int64_t D = L_.opt.dim, E = L_.opt.num_experts, rows = R_->rows, RR = R_->router_rows;
  Parameter& w = L_.router.weight();
  DeviceArray<float> d_logits(RR * E, s, /*poison=*/false);
  cuda_->Upload({{d_logits.get(), d_clean.data(), RR * E * sizeof(float)}});
  const bool image_mean = L_.router.input_kind() == RouterInputKind::kImageMean;
  const float* router_in = image_mean ? router_in_.get() : x_.data();
  CudaSgemm(true, false, D, E, RR, 1.f, router_in, D, d_logits.get(), E, 1.f, w.grad.data(), E,
            s);
  if (!image_mean) {
    CudaSgemm(false, true, rows, D, E, 1.f, d_logits.get(), E, w.value.data(), E, 1.f,
              dx->data(), D, s);
    return;
  }
  DeviceArray<float> d_in(RR * D, s);
  CudaSgemm(false, true, RR, D, E, 1.f, d_logits.get(), E, w.value.data(), E, 0.f, d_in.get(), D,
            s);
  ImageMeanRowsBackwardCuda(d_in.get(), RR, L_.opt.tokens_per_image, D, dx->data(), s);
}

}  // namespace moe
