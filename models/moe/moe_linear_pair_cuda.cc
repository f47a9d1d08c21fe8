// MoeLinearPair on device tensors (see moe_linear_pair.h): the host path's maths, merged-weight
// and per-expert paths. Plain C++ calling cuBLAS, dense_kernels.h and row_gather_kernels.h, so
// no nvcc.
//
// What stays on the host, and why: the routing decision reads host data (the attributes) and is
// a handful of rows ([images, E]); its code is the host path's own (RouterInputHost / Decide /
// RouterBackward) run on HOST COPIES of the router's parameters (router.w and, for attribute
// routing, the attribute Linear + LayerNorm), refreshed from the device parameters every
// ForwardFirst; their gradients are accumulated on the host copies and added to the device
// gradients in BackwardFirst. So the optimizer, gradient all-reduce and clipping see device
// parameters only, like every other layer.
//
// What runs on the device: the merged weights (all groups in one GEMM per tensor: a [groups, E]
// coefficient matrix, the gates at the chosen experts, times the experts viewed as
// [E, in * out]; zero coefficients add exact zeros, so this is the host's g1 W1 + g2 W2), the row
// GEMMs (one per run of consecutive images sharing a group: rows of an image are contiguous, so
// no gather), and the backward:
//   dX    per run, dY W_m^T
//   dW_m  per image, X_i^T dY_i (strided-batched over a chunk of images), db_m = 1^T dY_i
//   dots  [images, E] = dW_m . W_e + db_m . b_e for every expert (one GEMM each over the
//         flattened weights): the gate gradients <dW_m, W[e_r]> + <db_m, b[e_r]> are picked
//         from them on the host
//   dW, db  [E, ...] += C^T-weighted sums, C [E, images] holding g_r at e_r (one GEMM each)
// The per-image dW_m live in a chunk buffer of at most ~64 MiB, so large layers loop in chunks.
//
// PCIe per step and pair (B images, E experts, k choices, D = in1, A attribute bits, G groups):
//   down  router.w D*E (+ attribute layers A*D + 3*D), the image means B*D (CONTEXT only), the
//         gate-gradient dots 2 * B*E (one per layer);
//   up    the merged-weight coefficients G*E, the backward coefficients 2 * E*B, the router
//         grads (same sizes as down), dz B*D (CONTEXT only).
//
// The per-expert path (kToken, or merge_weights off), the host's per-expert loop on the device:
// by_expert_ is flattened in expert order and uploaded with every entry's gate (rows*k ints and
// floats, once per ForwardFirst); per expert e with n entries, experts in order on the one
// stream:
//   forward   xs = gather(x) [n, in]; o = xs W[e] + b[e] (kept in choice_out_, expert order);
//             y[row] += g * o (scatter-add: a row appears at most once per expert, so the rows
//             of one launch are distinct and no atomics are needed)
//   backward  gs = g * gather(dy); dgate = <dy[row], o> (double); dW[e] += xs^T gs;
//             db[e] += colsum gs; dx[row] += gs W[e]^T (scatter-add)
// The gate gradients (rows*k floats) come down once per layer; for kToken the router input
// (the rows, rows*in1) comes down in ForwardFirst and dz (same size) goes up in BackwardFirst.
// Host waits: the downloads are synchronous copies (legacy default stream), two per Forward
// (parameters; image means) and one per chunk per layer in Backward (the dots).
//
// Stream: the legacy default stream throughout, like the dense layers (models/layers/layer.h),
// so no events are needed; the cudaMemcpy calls order themselves with it.
#include <cuda_runtime_api.h>
#include <glog/logging.h>

#include <algorithm>
#include <functional>
#include <vector>

#include "core/kernels/cuda/cublas_gemm.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/dense_kernels.h"
#include "core/kernels/cuda/row_gather_kernels.h"
#include "models/layers/device_tensor.h"
#include "models/layers/layer_norm.h"
#include "models/layers/linear.h"
#include "models/moe/moe_linear_pair.h"

namespace moe {

namespace {

Tensor Upload(const std::vector<float>& v, std::vector<int64_t> shape) {
  Tensor d(std::move(shape), Device::kCUDA);
  CHECK_EQ(static_cast<int64_t>(v.size()), d.numel());
  if (!v.empty())
    CUDA_CHECK(cudaMemcpy(d.data(), v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice));
  return d;
}

// dev += host (a host gradient added to a device one).
void AddHostToDevice(const Tensor& host, Tensor* dev) {
  CHECK_EQ(host.numel(), dev->numel());
  if (host.empty()) return;
  Tensor up(host.shape(), Device::kCUDA);
  up.CopyFrom(host);
  AddInPlaceCuda(dev->data(), up.data(), dev->numel());
}

// Calls f(first, count) for each maximal run of consecutive values in the ascending `images`.
void ForEachRun(const std::vector<int64_t>& images,
                const std::function<void(int64_t, int64_t)>& f) {
  for (size_t j = 0; j < images.size();) {
    size_t e = j + 1;
    while (e < images.size() && images[e] == images[e - 1] + 1) ++e;
    f(images[j], static_cast<int64_t>(e - j));
    j = e;
  }
}

}  // namespace

void MoeLinearPair::RouterInputCuda(const Tensor& x) {
  using RI = MoeLinearPairOptions::RouterInput;
  const int64_t T = opt_.tokens_per_image, D = opt_.in1, B = rows_ / T;
  CHECK(router_.value.device() == Device::kCUDA)
      << name_ << ": CUDA input but parameters on the host; call MoveTo(Device::kCUDA) first";
  // Host copies of the router's parameters: created once, values refreshed, grads zeroed.
  if (host_router_.value.empty()) {
    host_router_ = MakeParameter(router_.name, router_.value.shape(), InitKind::kZeros, 0.f, 0);
    if (attr_proj_) {
      host_attr_proj_ = std::make_unique<Linear>(name_ + ".router.attr_proj", opt_.attribute_dim,
                                                 opt_.in1, seed_);
      host_attr_norm_ = std::make_unique<LayerNorm>(name_ + ".router.attr_norm", opt_.in1, seed_);
    }
  }
  host_router_.value.CopyFrom(router_.value);
  host_router_.grad.Zero();
  if (attr_proj_) {
    for (auto [dev, host] : {std::pair<Layer*, Layer*>{attr_proj_.get(), host_attr_proj_.get()},
                             {attr_norm_.get(), host_attr_norm_.get()}}) {
      const std::vector<Parameter*> dp = dev->Parameters(), hp = host->Parameters();
      CHECK_EQ(dp.size(), hp.size());
      for (size_t i = 0; i < dp.size(); ++i) {
        hp[i]->value.CopyFrom(dp[i]->value);
        hp[i]->grad.Zero();
      }
    }
  }
  switch (opt_.router_input) {
    case RI::kImageMean: {
      // The image means on the device, then down: B*D floats, not the rows. The same
      // definition as the host path's (MeanPoolTokens: double sums in token order, one
      // division), so both twins route from bit-identical inputs.
      Tensor m = NewDeviceTensor({B, D});
      if (B > 0) MeanPoolTokensForwardCuda(x.data(), B, T, D, m.data());
      router_in_ = Tensor({B, D});
      router_in_.CopyFrom(m);
      break;
    }
    case RI::kAttributes: RouterInputHost(x); break;  // reads the host attributes only
    case RI::kToken:  // the rows themselves: rows*D floats down
      router_in_ = Tensor({rows_, D});
      router_in_.CopyFrom(x);
      break;
  }
}

void MoeLinearPair::MergeGroupsCuda() {
  const int64_t G = static_cast<int64_t>(groups_.size()), E = opt_.num_experts;
  const int k = opt_.top_k;
  std::vector<float> coef(G * E, 0.f);
  for (int64_t g = 0; g < G; ++g)
    for (int r = 0; r < k; ++r) {
      const int64_t c = groups_[g].decision * k + r;
      coef[g * E + expert_[c]] += gate_[c];
    }
  const Tensor coef_d = Upload(coef, {G, E});
  for (int l = 0; l < 2; ++l) {
    const int64_t in = w_[l].value.dim(1), out = w_[l].value.dim(2);
    merged_w_[l] = NewDeviceTensor({G, in * out});
    merged_b_[l] = NewDeviceTensor({G, out});
    if (G == 0) continue;
    CudaSgemm(false, false, G, in * out, E, 1.f, coef_d.data(), E, w_[l].value.data(), in * out,
              0.f, merged_w_[l].data(), in * out);
    CudaSgemm(false, false, G, out, E, 1.f, coef_d.data(), E, b_[l].value.data(), out, 0.f,
              merged_b_[l].data(), out);
  }
}

Tensor MoeLinearPair::RoutedForwardCuda(int l, const Tensor& x) {
  const int64_t in = w_[l].value.dim(1), out = w_[l].value.dim(2), T = opt_.tokens_per_image;
  CHECK(x.device() == Device::kCUDA) << name_ << ": layer " << l << " input on the host";
  CHECK(x.ndim() == 2 && x.dim(0) == rows_ && x.dim(1) == in)
      << name_ << ": layer " << l << " input " << x.ShapeString() << ", want [" << rows_ << ", "
      << in << "]";
  if (groups_.empty()) return RoutedForwardExpertsCuda(l, x);
  in_[l] = x;
  Tensor y = NewDeviceTensor({rows_, out});
  for (size_t g = 0; g < groups_.size(); ++g) {
    const float* wm = merged_w_[l].data() + g * in * out;
    const float* bm = merged_b_[l].data() + g * out;
    ForEachRun(groups_[g].images, [&](int64_t i0, int64_t n) {
      float* yr = y.data() + i0 * T * out;
      CudaSgemm(false, false, n * T, out, in, 1.f, x.data() + i0 * T * in, in, wm, out, 0.f, yr,
                out);
      BiasAddRowsCuda(yr, bm, n * T, out);
    });
  }
  return y;
}

// dx of every merged group: dY_i W_m^T for the runs of images that share a merged weight.
Tensor MoeLinearPair::MergedInputGradCuda(int l, const Tensor& dy) {
  const int64_t in = w_[l].value.dim(1), out = w_[l].value.dim(2), T = opt_.tokens_per_image;
  const int64_t io = in * out;
  Tensor dx = NewDeviceTensor({rows_, in});
  for (size_t g = 0; g < groups_.size(); ++g) {
    const float* wm = merged_w_[l].data() + g * io;
    ForEachRun(groups_[g].images, [&](int64_t i0, int64_t n) {
      CudaSgemm(false, true, n * T, in, out, 1.f, dy.data() + i0 * T * out, out, wm, out, 0.f,
                dx.data() + i0 * T * in, in);
    });
  }
  return dx;
}

Tensor MoeLinearPair::RoutedBackwardCuda(int l, const Tensor& dy) {
  const int64_t in = w_[l].value.dim(1), out = w_[l].value.dim(2), T = opt_.tokens_per_image;
  const int64_t E = opt_.num_experts, B = decisions_, io = in * out;
  const int k = opt_.top_k;
  CHECK(in_[l].ndim() == 2) << name_ << ": Backward before Forward";
  CHECK(dy.device() == Device::kCUDA) << name_ << ": dy on the host";
  CHECK(dy.ndim() == 2 && dy.dim(0) == rows_ && dy.dim(1) == out) << name_ << ": dy shape";
  if (groups_.empty()) return RoutedBackwardExpertsCuda(l, dy);
  const float* x = in_[l].data();
  Tensor dx = MergedInputGradCuda(l, dy);
  if (B == 0) return dx;
  // Chunk of images whose dW_m / db_m fit ~64 MiB.
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(B, (int64_t{16} << 20) / (io + out)));
  Tensor dwm = NewDeviceTensor({chunk, io}), dbm = NewDeviceTensor({chunk, out});
  Tensor dots = NewDeviceTensor({chunk, E}), coef = NewDeviceTensor({E, chunk});
  const Tensor ones = Upload(std::vector<float>(T, 1.f), {T});
  std::vector<float> coef_h(E * chunk), dots_h(chunk * E);
  for (int64_t i0 = 0; i0 < B; i0 += chunk) {
    const int64_t n = std::min(chunk, B - i0);
    const float* xi = x + i0 * T * in;
    const float* dyi = dy.data() + i0 * T * out;
    // dW_m(i) = X_i^T dY_i and db_m(i) = 1^T dY_i for every image of the chunk.
    CudaSgemmStridedBatched(true, false, in, out, T, 1.f, xi, in, T * in, dyi, out, T * out, 0.f,
                            dwm.data(), out, io, n);
    CudaSgemmStridedBatched(false, false, 1, out, T, 1.f, ones.data(), T, 0, dyi, out, T * out,
                            0.f, dbm.data(), out, out, n);
    // Gate-gradient candidates: <dW_m(i), W[e]> + <db_m(i), b[e]> for every expert e.
    CudaSgemm(false, true, n, E, io, 1.f, dwm.data(), io, w_[l].value.data(), io, 0.f,
              dots.data(), E);
    CudaSgemm(false, true, n, E, out, 1.f, dbm.data(), out, b_[l].value.data(), out, 1.f,
              dots.data(), E);
    // dW[e] += sum_i C[e, i] dW_m(i), C[e, i] = the gate image i gives expert e (0 if not chosen).
    std::fill(coef_h.begin(), coef_h.end(), 0.f);
    for (int64_t j = 0; j < n; ++j)
      for (int r = 0; r < k; ++r) {
        const int64_t c = (i0 + j) * k + r;
        coef_h[expert_[c] * n + j] += gate_[c];
      }
    CUDA_CHECK(cudaMemcpy(coef.data(), coef_h.data(), E * n * sizeof(float),
                          cudaMemcpyHostToDevice));
    CudaSgemm(false, false, E, io, n, 1.f, coef.data(), n, dwm.data(), io, 1.f,
              w_[l].grad.data(), io);
    CudaSgemm(false, false, E, out, n, 1.f, coef.data(), n, dbm.data(), out, 1.f,
              b_[l].grad.data(), out);
    CUDA_CHECK(cudaMemcpy(dots_h.data(), dots.data(), n * E * sizeof(float),
                          cudaMemcpyDeviceToHost));
    for (int64_t j = 0; j < n; ++j)
      for (int r = 0; r < k; ++r) {
        const int64_t c = (i0 + j) * k + r;
        d_gate_[c] += dots_h[j * E + expert_[c]];
      }
  }
  return dx;
}

void MoeLinearPair::UploadExpertPlanCuda() {
  const int E = opt_.num_experts, k = opt_.top_k;
  plan_offset_.assign(E + 1, 0);
  for (int e = 0; e < E; ++e)
    plan_offset_[e + 1] = plan_offset_[e] + static_cast<int64_t>(by_expert_[e].size());
  const int64_t n = plan_offset_[E];
  CHECK_EQ(n, rows_ * k);
  CHECK_LT(rows_, int64_t{1} << 31) << name_ << ": rows must fit int32 on the device";
  std::vector<int32_t> rows(n);
  std::vector<float> gates(n);
  for (int e = 0; e < E; ++e)
    for (size_t j = 0; j < by_expert_[e].size(); ++j) {
      const auto [t, r] = by_expert_[e][j];
      rows[plan_offset_[e] + j] = static_cast<int32_t>(t);
      gates[plan_offset_[e] + j] = gate_[DecisionOf(t) * k + r];
    }
  plan_rows_ = Tensor({n}, Device::kCUDA, DType::kInt32);
  if (n > 0)
    CUDA_CHECK(cudaMemcpy(plan_rows_.int32_data(), rows.data(), n * sizeof(int32_t),
                          cudaMemcpyHostToDevice));
  plan_gates_ = Upload(gates, {n});
}

Tensor MoeLinearPair::RoutedForwardExpertsCuda(int l, const Tensor& x) {
  const int64_t in = w_[l].value.dim(1), out = w_[l].value.dim(2);
  const int E = opt_.num_experts;
  in_[l] = x;
  Tensor y = NewDeviceTensor({rows_, out});
  if (y.numel() > 0) CUDA_CHECK(cudaMemset(y.data(), 0, y.numel() * sizeof(float)));
  const int64_t total = plan_offset_[E];
  choice_out_[l] = NewDeviceTensor({total, out});
  int64_t max_n = 0;
  for (int e = 0; e < E; ++e) max_n = std::max(max_n, plan_offset_[e + 1] - plan_offset_[e]);
  Tensor xs = NewDeviceTensor({max_n, in});
  const int32_t* rows = plan_rows_.int32_data();
  for (int e = 0; e < E; ++e) {
    const int64_t off = plan_offset_[e], n = plan_offset_[e + 1] - off;
    if (n == 0) continue;
    float* os = choice_out_[l].data() + off * out;
    GatherRowsCuda(x.data(), rows + off, nullptr, n, in, xs.data());
    CudaSgemm(false, false, n, out, in, 1.f, xs.data(), in, w_[l].value.data() + e * in * out,
              out, 0.f, os, out);
    BiasAddRowsCuda(os, b_[l].value.data() + e * out, n, out);
    ScatterAddRowsCuda(os, rows + off, plan_gates_.data() + off, n, out, y.data());
  }
  return y;
}

Tensor MoeLinearPair::RoutedBackwardExpertsCuda(int l, const Tensor& dy) {
  const int64_t in = w_[l].value.dim(1), out = w_[l].value.dim(2), io = in * out;
  const int E = opt_.num_experts, k = opt_.top_k;
  const Tensor& x = in_[l];
  Tensor dx = NewDeviceTensor({rows_, in});
  if (dx.numel() > 0) CUDA_CHECK(cudaMemset(dx.data(), 0, dx.numel() * sizeof(float)));
  const int64_t total = plan_offset_[E];
  int64_t max_n = 0;
  for (int e = 0; e < E; ++e) max_n = std::max(max_n, plan_offset_[e + 1] - plan_offset_[e]);
  Tensor xs = NewDeviceTensor({max_n, in}), gs = NewDeviceTensor({max_n, out});
  Tensor dxs = NewDeviceTensor({max_n, in}), dgate = NewDeviceTensor({total});
  const int32_t* rows = plan_rows_.int32_data();
  for (int e = 0; e < E; ++e) {
    const int64_t off = plan_offset_[e], n = plan_offset_[e + 1] - off;
    if (n == 0) continue;
    GatherRowsCuda(x.data(), rows + off, nullptr, n, in, xs.data());
    GatherRowsCuda(dy.data(), rows + off, plan_gates_.data() + off, n, out, gs.data());
    GatheredRowDotsCuda(dy.data(), rows + off, choice_out_[l].data() + off * out, n, out,
                        dgate.data() + off);
    CudaSgemm(true, false, in, out, n, 1.f, xs.data(), in, gs.data(), out, 1.f,
              w_[l].grad.data() + e * io, out);
    ColumnSumAccumulateCuda(gs.data(), n, out, b_[l].grad.data() + e * out);
    CudaSgemm(false, true, n, in, out, 1.f, gs.data(), out, w_[l].value.data() + e * io, out, 0.f,
              dxs.data(), in);
    ScatterAddRowsCuda(dxs.data(), rows + off, nullptr, n, in, dx.data());
  }
  std::vector<float> dgate_h(total);
  if (total > 0)
    CUDA_CHECK(cudaMemcpy(dgate_h.data(), dgate.data(), total * sizeof(float),
                          cudaMemcpyDeviceToHost));
  for (int e = 0; e < E; ++e)
    for (size_t j = 0; j < by_expert_[e].size(); ++j) {
      const auto [t, r] = by_expert_[e][j];
      d_gate_[DecisionOf(t) * k + r] += dgate_h[plan_offset_[e] + j];
    }
  return dx;
}

void MoeLinearPair::RouterBackwardCuda(Tensor* dx) {
  const Tensor dz = RouterBackward();  // host: into the host copies' grads
  AddHostToDevice(host_router_.grad, &router_.grad);
  if (attr_proj_) {
    for (auto [dev, host] : {std::pair<Layer*, Layer*>{attr_proj_.get(), host_attr_proj_.get()},
                             {attr_norm_.get(), host_attr_norm_.get()}}) {
      const std::vector<Parameter*> dp = dev->Parameters(), hp = host->Parameters();
      for (size_t i = 0; i < dp.size(); ++i) AddHostToDevice(hp[i]->grad, &dp[i]->grad);
    }
  }
  if (opt_.router_input == MoeLinearPairOptions::RouterInput::kToken && rows_ > 0) {
    // The router input is x itself: dx += dz, as the host's Axpy.
    Tensor dzd(dz.shape(), Device::kCUDA);
    dzd.CopyFrom(dz);
    AddInPlaceCuda(dx->data(), dzd.data(), dz.numel());
  }
  if (opt_.router_input == MoeLinearPairOptions::RouterInput::kImageMean && rows_ > 0) {
    // d(mean)/dx: every token of image b gets dz_b / T, as the host's Axpy.
    const int64_t T = opt_.tokens_per_image, D = opt_.in1;
    Tensor dzd(dz.shape(), Device::kCUDA);
    dzd.CopyFrom(dz);
    Tensor spread = NewDeviceTensor({rows_, D});
    MeanPoolTokensBackwardCuda(dzd.data(), rows_ / T, T, D, spread.data());
    AddInPlaceCuda(dx->data(), spread.data(), rows_ * D);
  }
}

void MoeLinearPair::ZeroBiasGradColumnsCuda(int layer, int64_t begin, int64_t count) {
  Tensor& g = b_[layer].grad;
  const int64_t E = g.dim(0), cols = g.dim(1);
  if (count == 0 || E == 0) return;
  CUDA_CHECK(cudaMemset2D(g.data() + begin, cols * sizeof(float), 0, count * sizeof(float), E));
}

}  // namespace moe
