// CpuBackend (core/cpu_backend.h): the attention core, one OpenBLAS GEMM per (image, head) and
// product, and the per-image embeddings.
#include <vector>

#include "core/cpu_backend.h"
#include "core/gemm.h"
#include "core/kernels/cpu/softmax.h"

namespace moe {

Tensor CpuBackend::SelfAttentionForward(const Tensor& qkv, const AttentionShape& s,
                                        Tensor* probs) const {
  const int64_t B = s.batch, H = s.heads, T = s.tokens, D = s.dim, dh = D / H, ld = 3 * D;
  *probs = Tensor({B, H, T, T});
  Tensor ctx({B * T, D});
  for (int64_t b = 0; b < B; ++b) {
    const float* base = qkv.data() + b * T * ld;
    for (int64_t h = 0; h < H; ++h) {
      const float* q = base + h * dh;
      const float* k = base + D + h * dh;
      const float* v = base + 2 * D + h * dh;
      float* p = probs->data() + (b * H + h) * T * T;
      Sgemm(false, true, T, T, dh, s.scale, q, ld, k, ld, 0.f, p, T);  // S = scale Q K^T
      SoftmaxForwardRows(p, T, T, p);
      Sgemm(false, false, T, dh, T, 1.f, p, T, v, ld, 0.f, ctx.data() + b * T * D + h * dh, D);
    }
  }
  return ctx;
}

Tensor CpuBackend::SelfAttentionBackward(const Tensor& qkv, const Tensor& probs,
                                         const Tensor& dctx, const AttentionShape& s) const {
  const int64_t B = s.batch, H = s.heads, T = s.tokens, D = s.dim, dh = D / H, ld = 3 * D;
  Tensor dqkv({B * T, ld});
  std::vector<float> dp(T * T);  // one (image, head) at a time
  for (int64_t b = 0; b < B; ++b) {
    const float* base = qkv.data() + b * T * ld;
    float* dbase = dqkv.data() + b * T * ld;
    for (int64_t h = 0; h < H; ++h) {
      const float* q = base + h * dh;
      const float* k = base + D + h * dh;
      const float* v = base + 2 * D + h * dh;
      const float* p = probs.data() + (b * H + h) * T * T;
      const float* dout = dctx.data() + b * T * D + h * dh;
      // dP = dO V^T; dV = P^T dO.
      Sgemm(false, true, T, T, dh, 1.f, dout, D, v, ld, 0.f, dp.data(), T);
      Sgemm(true, false, T, dh, T, 1.f, p, T, dout, D, 0.f, dbase + 2 * D + h * dh, ld);
      // dS = softmax'(dP); dQ = scale dS K; dK = scale dS^T Q.
      SoftmaxBackwardRows(p, dp.data(), T, T, dp.data());
      Sgemm(false, false, T, dh, T, s.scale, dp.data(), T, k, ld, 0.f, dbase + h * dh, ld);
      Sgemm(true, false, T, dh, T, s.scale, dp.data(), T, q, ld, 0.f, dbase + D + h * dh, ld);
    }
  }
  return dqkv;
}

void CpuBackend::AddImageEmbeddings(Tensor* x, int64_t tokens, const Tensor& table_a,
                                    const std::vector<int>& ids_a, const Tensor& table_b,
                                    const std::vector<int>& ids_b) const {
  const int64_t rows = x->dim(0), D = x->dim(1);
  for (int64_t t = 0; t < rows; ++t) {
    float* xt = x->data() + t * D;
    const float* ea = table_a.data() + ids_a[t / tokens] * D;
    const float* eb = table_b.data() + ids_b[t / tokens] * D;
    for (int64_t j = 0; j < D; ++j) xt[j] += ea[j] + eb[j];
  }
}

void CpuBackend::ImageEmbeddingsBackward(const Tensor& dx, int64_t tokens,
                                         const std::vector<int>& ids_a, Tensor* dtable_a,
                                         const std::vector<int>& ids_b, Tensor* dtable_b) const {
  const int64_t rows = dx.dim(0), D = dx.dim(1);
  for (int64_t t = 0; t < rows; ++t) {
    const float* dxt = dx.data() + t * D;
    float* da = dtable_a->data() + ids_a[t / tokens] * D;
    float* db = dtable_b->data() + ids_b[t / tokens] * D;
    for (int64_t j = 0; j < D; ++j) {
      da[j] += dxt[j];
      db[j] += dxt[j];
    }
  }
}

}  // namespace moe
