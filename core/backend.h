// Backend: every device operation the layers, nets and trainer use, one implementation per
// device, in the manner of ggml's backend tables. BackendFor(device) is the ONE place that chooses
// an implementation; code above it is device-agnostic:
//
//   const Backend& be = BackendFor(x.device());
//   Tensor y = be.GeluForward(x, &saved);
//
// Implementations: core/cpu_backend*.cc (host kernels of core/kernels/cpu, OpenBLAS through
// core/gemm.h) and core/kernels/cuda/cuda_backend*.cc (the CUDA kernels of core/kernels/cuda and
// cuBLAS; built only with the CUDA path). Each op states its maths once here; the two sides
// compute the same float operations where the kernels allow (the CUDA kernels' headers say where
// they differ, e.g. cuBLAS sums a GEMM in another order). Device work is enqueued on the legacy
// default stream; a host read of a result (Tensor::ToVector, CopyFrom to the host) waits for it.
//
// Ops are coarse on purpose: one call per layer step (LinearForward, LayerNormBackward, the
// attention core), so that a layer reads as its maths and each device keeps its own fused form.
// Tensors passed in must be on the backend's device (tensor arguments of one call share a device),
// float32 unless an argument says otherwise. Ops that return a tensor return a fresh one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/optim/adamw.h"
#include "core/tensor.h"

namespace moe {

// Non-overlapping p x p patches of [B, C*S*S] CHW images, T = (S/p)^2 per image in row-major patch
// order; a patch is the vector (c, i, j) -> c*p*p + i*p + j (a stride-p conv kernel's layout).
struct PatchGeometry {
  int64_t channels = 0, image_size = 0, patch = 0;
  int64_t tokens() const { return (image_size / patch) * (image_size / patch); }
  int64_t patch_dim() const { return channels * patch * patch; }
  int64_t pixels() const { return channels * image_size * image_size; }
};

// Multi-head self-attention inside each image: qkv [B*T, 3D] laid out as [q | k | v] columns,
// head h owning columns h*dh .. (h+1)*dh - 1 of each part (dh = D / heads).
struct AttentionShape {
  int64_t batch = 0, heads = 0, tokens = 0, dim = 0;
  float scale = 1.f;  // multiplies Q K^T (the caller's 1/sqrt(dh), computed as it defines it)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;

  // ---- memory (Tensor's allocation, fill and copies go through these) ----
  virtual void* Allocate(size_t bytes) const = 0;
  virtual void Free(void* p) const = 0;
  // p[i] = value for i < count (also zeroes int32 buffers: 0.f is all zero bits).
  virtual void Fill(float* p, int64_t count, float value) const = 0;
  // bytes from src to dst; each side on its stated device, this backend's device or the host.
  virtual void Copy(void* dst, Device dst_device, const void* src, Device src_device,
                    size_t bytes) const = 0;
  // An uninitialised tensor on this device. On CUDA, while poisoning is on, every element is
  // first set to NaN's bits, so that an element a kernel fails to write shows up.
  virtual Tensor NewTensor(std::vector<int64_t> shape, DType dtype = DType::kFloat32) const = 0;
  // dst[dst_offset + i] = src[src_offset + i] for i < count; float tensors on this device.
  void CopyElements(Tensor* dst, int64_t dst_offset, const Tensor& src, int64_t src_offset,
                    int64_t count) const;

  // ---- GEMM: row-major C = alpha op(A) op(B) + beta C (core/gemm.h's contract) ----
  virtual void Gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                    const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                    float* C, int64_t ldc) const = 0;

  // ---- dense layers ----
  // y = x W + b: x [rows, in], W [in, out], bias [out] or nullptr.
  virtual Tensor LinearForward(const Tensor& x, const Tensor& w, const Tensor* bias) const = 0;
  // Returns dx = dy W^T; ACCUMULATES dW += x^T dy and, with dbias, dbias += column sums of dy.
  virtual Tensor LinearBackward(const Tensor& x, const Tensor& dy, const Tensor& w, Tensor* dw,
                                Tensor* dbias) const = 0;
  // Exact (erf) GELU, elementwise. *saved gets what the backward needs of x, each backend's own
  // choice: the host keeps gelu'(x) (so that its backward is one product per element, not a
  // second evaluation of erfc), CUDA keeps x itself. The backward returns dx = dy * gelu'(x).
  virtual Tensor GeluForward(const Tensor& x, Tensor* saved) const = 0;
  virtual Tensor GeluBackward(const Tensor& saved, const Tensor& dy) const = 0;
  // LayerNorm over the last dim of x [rows, dim] (statistics in double); *mean, *rstd get the
  // per-row statistics ([rows] tensors) for the backward, which returns dx and ACCUMULATES
  // dgamma and dbeta.
  virtual Tensor LayerNormForward(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                  float eps, Tensor* mean, Tensor* rstd) const = 0;
  virtual Tensor LayerNormBackward(const Tensor& x, const Tensor& dy, const Tensor& gamma,
                                   const Tensor& mean, const Tensor& rstd, Tensor* dgamma,
                                   Tensor* dbeta) const = 0;
  // y += x elementwise (same shape).
  virtual void AddInPlace(Tensor* y, const Tensor& x) const = 0;
  // y[r, j] += v[j], y viewed as [numel / v.numel(), v.numel()] (a bias, a position embedding).
  virtual void AddRowVector(Tensor* y, const Tensor& v) const = 0;
  // dv[j] += sum_r dy[r, j], dy viewed as [numel / dv.numel(), dv.numel()], summed in double.
  virtual void AccumulateColumnSums(const Tensor& dy, Tensor* dv) const = 0;
  // y = x with each of scales.numel() equal contiguous segments multiplied by its scale (x's
  // numel must divide evenly; scales on x's device): stochastic depth's per-image keep/drop
  // (models/layers/drop_path.h).
  virtual Tensor ScaleSegments(const Tensor& x, const Tensor& scales) const = 0;
  // [B*T, D] -> [B, D], the mean over each image's T rows (sums in double); backward dy / T.
  virtual Tensor MeanPoolTokensForward(const Tensor& x, int64_t tokens) const = 0;
  virtual Tensor MeanPoolTokensBackward(const Tensor& dy, int64_t tokens) const = 0;
  // images [B, C*S*S] -> patches [B*T, C*p*p] and its inverse permutation.
  virtual Tensor Patchify(const Tensor& images, const PatchGeometry& g) const = 0;
  virtual Tensor Unpatchify(const Tensor& patches, const PatchGeometry& g) const = 0;
  // y[b, c, r] = x[b, r, c] for x [batch, rows, cols] (each image's block transposed).
  virtual Tensor TransposeBlocks(const Tensor& x, int64_t batch, int64_t rows,
                                 int64_t cols) const = 0;
  // The attention core between the projections: qkv [B*T, 3D] -> context [B*T, D], per image
  // and head P = softmax(scale Q K^T), O = P V; *probs gets P [B, H, T, T] for the backward,
  // which returns dqkv [B*T, 3D] from Forward's qkv and probs and dcontext.
  virtual Tensor SelfAttentionForward(const Tensor& qkv, const AttentionShape& s,
                                      Tensor* probs) const = 0;
  virtual Tensor SelfAttentionBackward(const Tensor& qkv, const Tensor& probs,
                                       const Tensor& dctx, const AttentionShape& s) const = 0;
  // Softmax cross-entropy of logits [B, C] against host labels in [0, C), with label smoothing
  // eps in [0, 1): target t = (1 - eps) onehot + eps / C. Fills the per-row losses
  // -sum_j t_j log p_j = (1 - eps)(lse - logit[label]) + eps (lse - mean_j logit_j) (eps = 0:
  // lse - logit[label]) and argmaxes (lowest index on ties) on the host and returns
  // dlogits = loss_scale * p - off, minus on at the label, on this device, in float:
  // off = loss_scale * (eps / C), on = loss_scale * (1 - eps) (eps = 0: exactly
  // loss_scale * (softmax - onehot)).
  virtual Tensor SoftmaxCrossEntropy(const Tensor& logits, const std::vector<int>& labels,
                                     float loss_scale, float label_smoothing,
                                     std::vector<double>* row_loss,
                                     std::vector<int>* pred) const = 0;
  // Two per-image embeddings added to every token: x [B*T, D],
  //   x[t, :] += table_a[ids_a[t / T], :] + table_b[ids_b[t / T], :]   (host ids, one per image);
  // the backward ACCUMULATES dtable_a[ids_a[t / T], :] += dx[t, :] and likewise for b.
  virtual void AddImageEmbeddings(Tensor* x, int64_t tokens, const Tensor& table_a,
                                  const std::vector<int>& ids_a, const Tensor& table_b,
                                  const std::vector<int>& ids_b) const = 0;
  virtual void ImageEmbeddingsBackward(const Tensor& dx, int64_t tokens,
                                       const std::vector<int>& ids_a, Tensor* dtable_a,
                                       const std::vector<int>& ids_b, Tensor* dtable_b) const = 0;

  // ---- optimizer ----
  // One AdamW update of a parameter tensor w from its gradient g, moments m and v in place
  // (core/optim/adamw.h's maths; s.weight_decay already 0 where the parameter takes none).
  virtual void AdamWStep(Tensor* w, const Tensor& g, Tensor* m, Tensor* v,
                         const AdamWStepScalars& s) const = 0;
  // Sum of squares of every element of tensors[i], added into sums[group[i]] (groups summed in
  // double, tensors in order); returns `groups` sums on the host.
  virtual std::vector<double> SquaredNormsByGroup(const std::vector<const Tensor*>& tensors,
                                                  const std::vector<int>& group,
                                                  int groups) const = 0;
  // t *= s elementwise.
  virtual void Scale(Tensor* t, float s) const = 0;
  // The tensors one after another into bucket (which holds at least their total), and back.
  virtual void FlattenInto(const std::vector<const Tensor*>& tensors, Tensor* bucket) const = 0;
  virtual void UnflattenFrom(const Tensor& bucket, const std::vector<Tensor*>& tensors) const = 0;
};

// THE choice of implementation. Device::kCUDA in a build without the CUDA path is a fatal error
// ("device cuda: this build has no CUDA path").
const Backend& BackendFor(Device device);
// Whether BackendFor(device) is available in this build (the config check asks before a run).
bool BackendAvailable(Device device);

// NaN-poisoning of new device tensors (Backend::NewTensor on CUDA); off by default, the GPU tests
// turn it on. Process-wide.
void SetPoisonNewDeviceTensors(bool on);
bool PoisonNewDeviceTensors();

}  // namespace moe
