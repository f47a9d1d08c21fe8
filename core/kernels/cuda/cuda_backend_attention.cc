// CudaBackend (core/kernels/cuda/cuda_backend.h): the attention core and the per-image
// embeddings.
//
// Attention: the host loops' maths with the per-(image, head) products as one
// CudaSgemmStridedBatched per head, batched over the images (an image's Q/K/V block starts T*3D
// floats after the previous one's, its probabilities H*T*T, its context rows T*D; the (image,
// head) pair is not one linear stride since heads step dh columns inside an image); the row
// softmax and its backward over all B*H*T rows at once. The backward keeps the full dP / dS
// [B, H, T, T] on the device (the host reuses one T x T scratch) so the products batch.
//
// Embeddings: GEMMs with a one-hot row per token, [one-hot a | one-hot b] (rows x (Ra + Rb),
// built on the host and uploaded: 16 bytes a token for two 2-row tables):
// x += OH_a E_a + OH_b E_b, and dE = OH^T dx.
#include <cstdint>
#include <vector>

#include "core/kernels/cuda/cublas_gemm.h"
#include "core/kernels/cuda/cuda_backend.h"
#include "core/kernels/cuda/dense_kernels.h"

namespace moe {

Tensor CudaBackend::SelfAttentionForward(const Tensor& qkv_t, const AttentionShape& s,
                                         Tensor* probs) const {
  const int64_t B = s.batch, H = s.heads, T = s.tokens, D = s.dim, dh = D / H, ld = 3 * D;
  *probs = NewTensor({B, H, T, T});
  Tensor ctx = NewTensor({B * T, D});
  if (B == 0) return ctx;
  const float* qkv = qkv_t.data();
  float* p = probs->data();
  for (int64_t h = 0; h < H; ++h) {
    // S = scale Q K^T, for every image.
    CudaSgemmStridedBatched(false, true, T, T, dh, s.scale, qkv + h * dh, ld, T * ld,
                            qkv + D + h * dh, ld, T * ld, 0.f, p + h * T * T, T, H * T * T, B);
  }
  SoftmaxForwardRowsCuda(p, B * H * T, T, p);
  for (int64_t h = 0; h < H; ++h) {
    // O = P V into the head's dh columns of the context.
    CudaSgemmStridedBatched(false, false, T, dh, T, 1.f, p + h * T * T, T, H * T * T,
                            qkv + 2 * D + h * dh, ld, T * ld, 0.f, ctx.data() + h * dh, D, T * D,
                            B);
  }
  return ctx;
}

Tensor CudaBackend::SelfAttentionBackward(const Tensor& qkv_t, const Tensor& probs,
                                          const Tensor& dctx, const AttentionShape& s) const {
  const int64_t B = s.batch, H = s.heads, T = s.tokens, D = s.dim, dh = D / H, ld = 3 * D;
  Tensor dqkv = NewTensor({B * T, ld});
  if (B == 0) return dqkv;
  Tensor dp = NewTensor({B, H, T, T});
  const float* qkv = qkv_t.data();
  const float* p = probs.data();
  float* dq = dqkv.data();
  for (int64_t h = 0; h < H; ++h) {
    const float* dout = dctx.data() + h * dh;
    // dP = dO V^T; dV = P^T dO.
    CudaSgemmStridedBatched(false, true, T, T, dh, 1.f, dout, D, T * D, qkv + 2 * D + h * dh, ld,
                            T * ld, 0.f, dp.data() + h * T * T, T, H * T * T, B);
    CudaSgemmStridedBatched(true, false, T, dh, T, 1.f, p + h * T * T, T, H * T * T, dout, D,
                            T * D, 0.f, dq + 2 * D + h * dh, ld, T * ld, B);
  }
  // dS = softmax'(dP), in place, every row at once.
  SoftmaxBackwardRowsCuda(p, dp.data(), B * H * T, T, dp.data());
  for (int64_t h = 0; h < H; ++h) {
    const float* ds = dp.data() + h * T * T;
    // dQ = scale dS K; dK = scale dS^T Q.
    CudaSgemmStridedBatched(false, false, T, dh, T, s.scale, ds, T, H * T * T, qkv + D + h * dh,
                            ld, T * ld, 0.f, dq + h * dh, ld, T * ld, B);
    CudaSgemmStridedBatched(true, false, T, dh, T, s.scale, ds, T, H * T * T, qkv + h * dh, ld,
                            T * ld, 0.f, dq + D + h * dh, ld, T * ld, B);
  }
  return dqkv;
}

namespace {
// [one-hot of ids_a | one-hot of ids_b] per token (rows x (ra + rb)), uploaded to the device.
Tensor UploadedOneHot(int64_t rows, int64_t tokens, const std::vector<int>& ids_a, int64_t ra,
                      const std::vector<int>& ids_b, int64_t rb) {
  const int64_t width = ra + rb;
  Tensor oh = Tensor::Zeros({rows, width});
  for (int64_t t = 0; t < rows; ++t) {
    oh.at(t * width + ids_a[t / tokens]) = 1.f;
    oh.at(t * width + ra + ids_b[t / tokens]) = 1.f;
  }
  Tensor up({rows, width}, Device::kCUDA);
  up.CopyFrom(oh);
  return up;
}
}  // namespace

void CudaBackend::AddImageEmbeddings(Tensor* x, int64_t tokens, const Tensor& table_a,
                                     const std::vector<int>& ids_a, const Tensor& table_b,
                                     const std::vector<int>& ids_b) const {
  const int64_t rows = x->dim(0), D = x->dim(1), ra = table_a.dim(0), rb = table_b.dim(0);
  if (rows == 0) return;
  const Tensor oh = UploadedOneHot(rows, tokens, ids_a, ra, ids_b, rb);
  CudaSgemm(false, false, rows, D, ra, 1.f, oh.data(), ra + rb, table_a.data(), D, 1.f,
            x->data(), D);
  CudaSgemm(false, false, rows, D, rb, 1.f, oh.data() + ra, ra + rb, table_b.data(), D, 1.f,
            x->data(), D);
}

void CudaBackend::ImageEmbeddingsBackward(const Tensor& dx, int64_t tokens,
                                          const std::vector<int>& ids_a, Tensor* dtable_a,
                                          const std::vector<int>& ids_b, Tensor* dtable_b) const {
  const int64_t rows = dx.dim(0), D = dx.dim(1), ra = dtable_a->dim(0), rb = dtable_b->dim(0);
  if (rows == 0) return;
  const Tensor oh = UploadedOneHot(rows, tokens, ids_a, ra, ids_b, rb);
  CudaSgemm(true, false, ra, D, rows, 1.f, oh.data(), ra + rb, dx.data(), D, 1.f,
            dtable_a->data(), D);
  CudaSgemm(true, false, rb, D, rows, 1.f, oh.data() + ra, ra + rb, dx.data(), D, 1.f,
            dtable_b->data(), D);
}

}  // namespace moe
