// The host implementation of core/backend.h: OpenBLAS GEMMs (core/gemm.h) and the host kernels of
// core/kernels/cpu, one thread per rank. Its ops are split by job over cpu_backend.cc (memory,
// GEMM, elementwise), cpu_backend_layers.cc (dense layers), cpu_backend_attention.cc (attention
// core, per-image embeddings) and cpu_backend_optim.cc (optimizer side). Reach it through
// BackendFor(Device::kCPU).
#pragma once

#include "core/backend.h"

namespace moe {

class CpuBackend : public Backend {
 public:
  Device device() const override { return Device::kCPU; }

  void* Allocate(size_t bytes) const override;
  void Free(void* p) const override;
  void Fill(float* p, int64_t count, float value) const override;
  void Copy(void* dst, Device dst_device, const void* src, Device src_device,
            size_t bytes) const override;
  Tensor NewTensor(std::vector<int64_t> shape, DType dtype = DType::kFloat32) const override;
  void Gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
            const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
            int64_t ldc) const override;

  Tensor LinearForward(const Tensor& x, const Tensor& w, const Tensor* bias) const override;
  Tensor LinearBackward(const Tensor& x, const Tensor& dy, const Tensor& w, Tensor* dw,
                        Tensor* dbias) const override;
  Tensor GeluForward(const Tensor& x, Tensor* saved) const override;
  Tensor GeluBackward(const Tensor& saved, const Tensor& dy) const override;
  Tensor LayerNormForward(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps,
                          Tensor* mean, Tensor* rstd) const override;
  Tensor LayerNormBackward(const Tensor& x, const Tensor& dy, const Tensor& gamma,
                           const Tensor& mean, const Tensor& rstd, Tensor* dgamma,
                           Tensor* dbeta) const override;
  void AddInPlace(Tensor* y, const Tensor& x) const override;
  void AddRowVector(Tensor* y, const Tensor& v) const override;
  Tensor ScaleSegments(const Tensor& x, const Tensor& scales) const override;
  void AccumulateColumnSums(const Tensor& dy, Tensor* dv) const override;
  Tensor MeanPoolTokensForward(const Tensor& x, int64_t tokens) const override;
  Tensor MeanPoolTokensBackward(const Tensor& dy, int64_t tokens) const override;
  Tensor Patchify(const Tensor& images, const PatchGeometry& g) const override;
  Tensor Unpatchify(const Tensor& patches, const PatchGeometry& g) const override;
  Tensor TransposeBlocks(const Tensor& x, int64_t batch, int64_t rows,
                         int64_t cols) const override;
  Tensor SelfAttentionForward(const Tensor& qkv, const AttentionShape& s,
                              Tensor* probs) const override;
  Tensor SelfAttentionBackward(const Tensor& qkv, const Tensor& probs, const Tensor& dctx,
                               const AttentionShape& s) const override;
  Tensor SoftmaxCrossEntropy(const Tensor& logits, const std::vector<int>& labels,
                             float loss_scale, float label_smoothing,
                             std::vector<double>* row_loss,
                             std::vector<int>* pred) const override;
  void AddImageEmbeddings(Tensor* x, int64_t tokens, const Tensor& table_a,
                          const std::vector<int>& ids_a, const Tensor& table_b,
                          const std::vector<int>& ids_b) const override;
  void ImageEmbeddingsBackward(const Tensor& dx, int64_t tokens, const std::vector<int>& ids_a,
                               Tensor* dtable_a, const std::vector<int>& ids_b,
                               Tensor* dtable_b) const override;

  void AdamWStep(Tensor* w, const Tensor& g, Tensor* m, Tensor* v,
                 const AdamWStepScalars& s) const override;
  std::vector<double> SquaredNormsByGroup(const std::vector<const Tensor*>& tensors,
                                          const std::vector<int>& group,
                                          int groups) const override;
  void Scale(Tensor* t, float s) const override;
  void FlattenInto(const std::vector<const Tensor*>& tensors, Tensor* bucket) const override;
  void UnflattenFrom(const Tensor& bucket, const std::vector<Tensor*>& tensors) const override;
};

// The process's one CpuBackend (never destroyed: tensors freed at exit still reach it).
const Backend& TheCpuBackend();

}  // namespace moe
