// CpuBackend (core/cpu_backend.h): the dense layers' ops, the host loops the layers ran before
// the backend existed, in the same float order.
#include <glog/logging.h>

#include <algorithm>
#include <cmath>

#include "core/cpu_backend.h"
#include "core/gemm.h"
#include "core/kernels/cpu/gelu.h"
#include "core/kernels/cpu/layer_norm.h"

namespace moe {

Tensor CpuBackend::LinearForward(const Tensor& x, const Tensor& w, const Tensor* bias) const {
  const int64_t rows = x.dim(0), in = w.dim(0), out = w.dim(1);
  Tensor y({rows, out});
  float* yd = y.data();
  // The bias goes in first and the product is accumulated onto it (beta = 1).
  if (bias != nullptr) {
    const float* b = bias->data();
    for (int64_t r = 0; r < rows; ++r) std::copy(b, b + out, yd + r * out);
  }
  SgemmPacked(false, false, rows, out, in, 1.f, x.data(), w.data(), bias != nullptr ? 1.f : 0.f,
              yd);
  return y;
}

Tensor CpuBackend::LinearBackward(const Tensor& x, const Tensor& dy, const Tensor& w, Tensor* dw,
                                  Tensor* dbias) const {
  const int64_t rows = x.dim(0), in = w.dim(0), out = w.dim(1);
  // dW += x^T dy (beta = 1 accumulates).
  SgemmPacked(true, false, in, out, rows, 1.f, x.data(), dy.data(), 1.f, dw->data());
  if (dbias != nullptr) AccumulateColumnSums(dy, dbias);
  Tensor dx({rows, in});
  SgemmPacked(false, true, rows, in, out, 1.f, dy.data(), w.data(), 0.f, dx.data());
  return dx;
}

// The host keeps gelu'(x): the forward's normal tail serves both (gelu.h), the backward multiplies.
Tensor CpuBackend::GeluForward(const Tensor& x, Tensor* saved) const {
  Tensor y(x.shape());
  *saved = Tensor(x.shape());
  ::moe::GeluForwardWithDerivative(x.data(), y.data(), saved->data(), x.numel());
  return y;
}

Tensor CpuBackend::GeluBackward(const Tensor& saved, const Tensor& dy) const {
  Tensor dx(saved.shape());
  ::moe::GeluBackwardFromDerivative(saved.data(), dy.data(), dx.data(), saved.numel());
  return dx;
}

Tensor CpuBackend::LayerNormForward(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                    float eps, Tensor* mean, Tensor* rstd) const {
  const int64_t rows = x.dim(0), dim = x.dim(1);
  *mean = Tensor({rows});
  *rstd = Tensor({rows});
  Tensor y({rows, dim});
  ::moe::LayerNormForward(x.data(), gamma.data(), beta.data(), rows, dim, eps, y.data(),
                          mean->data(), rstd->data());
  return y;
}

Tensor CpuBackend::LayerNormBackward(const Tensor& x, const Tensor& dy, const Tensor& gamma,
                                     const Tensor& mean, const Tensor& rstd, Tensor* dgamma,
                                     Tensor* dbeta) const {
  const int64_t rows = x.dim(0), dim = x.dim(1);
  Tensor dx({rows, dim});
  ::moe::LayerNormBackward(x.data(), dy.data(), gamma.data(), mean.data(), rstd.data(), rows, dim,
                           dx.data(), dgamma->data(), dbeta->data());
  return dx;
}

Tensor CpuBackend::ScaleSegments(const Tensor& x, const Tensor& scales) const {
  const int64_t segments = scales.numel();
  CHECK(segments > 0 && x.numel() % segments == 0)
      << "ScaleSegments: " << x.ShapeString() << " does not split into " << segments
      << " segments";
  const int64_t per_segment = x.numel() / segments;
  Tensor y(x.shape());
  for (int64_t b = 0; b < segments; ++b)
    for (int64_t i = b * per_segment; i < (b + 1) * per_segment; ++i)
      y.data()[i] = x.data()[i] * scales.data()[b];
  return y;
}

Tensor CpuBackend::MeanPoolTokensForward(const Tensor& x, int64_t tokens) const {
  const int64_t batch = x.dim(0) / tokens, dim = x.dim(1);
  Tensor y({batch, dim});
  std::vector<double> acc(dim);
  for (int64_t b = 0; b < batch; ++b) {
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int64_t t = 0; t < tokens; ++t) {
      const float* row = x.data() + (b * tokens + t) * dim;
      for (int64_t j = 0; j < dim; ++j) acc[j] += row[j];
    }
    for (int64_t j = 0; j < dim; ++j) y.data()[b * dim + j] = static_cast<float>(acc[j] / tokens);
  }
  return y;
}

Tensor CpuBackend::MeanPoolTokensBackward(const Tensor& dy, int64_t tokens) const {
  const int64_t batch = dy.dim(0), dim = dy.dim(1);
  Tensor dx({batch * tokens, dim});
  const float inv = 1.f / static_cast<float>(tokens);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t j = 0; j < dim; ++j)
        dx.data()[(b * tokens + t) * dim + j] = dy.data()[b * dim + j] * inv;
  return dx;
}

namespace {
// Calls fn(image offset, patch offset) for every contiguous run of p pixels of a patch: one walk
// serves both directions of the permutation.
template <typename Fn>
void ForEachPatchRun(const PatchGeometry& g, int64_t batch, Fn fn) {
  const int64_t S = g.image_size, p = g.patch, plane = S * S, grid = S / p;
  const int64_t T = g.tokens(), patch_dim = g.patch_dim();
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const int64_t py = t / grid, px = t % grid;
      for (int64_t c = 0; c < g.channels; ++c)
        for (int64_t i = 0; i < p; ++i)
          fn(b * g.channels * plane + c * plane + (py * p + i) * S + px * p,
             (b * T + t) * patch_dim + (c * p + i) * p);
    }
}
}  // namespace

Tensor CpuBackend::Patchify(const Tensor& images, const PatchGeometry& g) const {
  const int64_t batch = images.dim(0);
  Tensor patches({batch * g.tokens(), g.patch_dim()});
  const float* in = images.data();
  float* out = patches.data();
  ForEachPatchRun(g, batch, [&](int64_t img, int64_t pat) {
    std::copy(in + img, in + img + g.patch, out + pat);
  });
  return patches;
}

Tensor CpuBackend::Unpatchify(const Tensor& patches, const PatchGeometry& g) const {
  const int64_t batch = patches.dim(0) / g.tokens();
  Tensor images({batch, g.pixels()});
  const float* in = patches.data();
  float* out = images.data();
  ForEachPatchRun(g, batch, [&](int64_t img, int64_t pat) {
    std::copy(in + pat, in + pat + g.patch, out + img);
  });
  return images;
}

Tensor CpuBackend::SoftmaxCrossEntropy(const Tensor& logits, const std::vector<int>& labels,
                                       float loss_scale, float label_smoothing,
                                       std::vector<double>* row_loss,
                                       std::vector<int>* pred) const {
  const int64_t B = logits.dim(0), C = logits.dim(1);
  Tensor dlogits({B, C});
  row_loss->assign(B, 0.0);
  pred->assign(B, 0);
  const float eps = label_smoothing;
  // With eps = 0: off = 0 and on = loss_scale exactly, so the gradient keeps its float bits.
  const float off = loss_scale * (eps / static_cast<float>(C));
  const float on = loss_scale * (1.f - eps);
  for (int64_t r = 0; r < B; ++r) {
    const float* l = logits.data() + r * C;
    int arg = 0;
    for (int64_t j = 1; j < C; ++j)
      if (l[j] > l[arg]) arg = static_cast<int>(j);
    const double mx = l[arg];
    double sum = 0, logit_sum = 0;
    for (int64_t j = 0; j < C; ++j) {
      sum += std::exp(l[j] - mx);
      logit_sum += l[j];
    }
    const double lse = mx + std::log(sum);
    float* d = dlogits.data() + r * C;
    // The float probability first, then the scale: the order the loss's backward always used.
    for (int64_t j = 0; j < C; ++j)
      d[j] = loss_scale * static_cast<float>(std::exp(l[j] - lse)) - off;
    d[labels[r]] -= on;
    (*pred)[r] = arg;
    const double ce = lse - l[labels[r]];
    (*row_loss)[r] = eps > 0 ? (1.0 - eps) * ce + eps * (lse - logit_sum / C) : ce;
  }
  return dlogits;
}

}  // namespace moe
