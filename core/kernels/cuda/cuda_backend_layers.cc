// CudaBackend (core/kernels/cuda/cuda_backend.h): the dense layers' ops. Linear is cuBLAS with the
// bias added after the product (BiasAddRowsCuda) and its gradient summed by the deterministic
// ColumnSumAccumulateCuda (double sums, like the host loop); the rest are the kernels of
// dense_kernels.h and gelu_kernels.h, each checked against its host counterpart by tests/gpu.
#include <cuda_runtime_api.h>
#include <glog/logging.h>

#include <vector>

#include "core/kernels/cuda/cublas_gemm.h"
#include "core/kernels/cuda/cuda_backend.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/dense_kernels.h"
#include "core/kernels/cuda/drop_path_kernels.h"
#include "core/kernels/cuda/gelu_kernels.h"

namespace moe {

Tensor CudaBackend::LinearForward(const Tensor& x, const Tensor& w, const Tensor* bias) const {
  const int64_t rows = x.dim(0), in = w.dim(0), out = w.dim(1);
  Tensor y = NewTensor({rows, out});
  if (rows == 0) return y;
  CudaSgemm(false, false, rows, out, in, 1.f, x.data(), in, w.data(), out, 0.f, y.data(), out);
  if (bias != nullptr) BiasAddRowsCuda(y.data(), bias->data(), rows, out);
  return y;
}

Tensor CudaBackend::LinearBackward(const Tensor& x, const Tensor& dy, const Tensor& w, Tensor* dw,
                                   Tensor* dbias) const {
  const int64_t rows = x.dim(0), in = w.dim(0), out = w.dim(1);
  Tensor dx = NewTensor({rows, in});
  if (rows == 0) return dx;
  // dW += x^T dy (beta = 1 accumulates).
  CudaSgemm(true, false, in, out, rows, 1.f, x.data(), in, dy.data(), out, 1.f, dw->data(), out);
  if (dbias != nullptr) ColumnSumAccumulateCuda(dy.data(), rows, out, dbias->data());
  // dx = dy W^T.
  CudaSgemm(false, true, rows, in, out, 1.f, dy.data(), out, w.data(), out, 0.f, dx.data(), in);
  return dx;
}

// CUDA keeps x: its kernels are unchanged, GeluBackwardCuda evaluating gelu'(x) again (not
// measured against keeping the derivative, which would need a GPU).
Tensor CudaBackend::GeluForward(const Tensor& x, Tensor* saved) const {
  Tensor y = NewTensor(x.shape());
  if (x.numel() > 0) GeluForwardCuda(x.data(), y.data(), x.numel());
  *saved = x;
  return y;
}

Tensor CudaBackend::GeluBackward(const Tensor& saved, const Tensor& dy) const {
  Tensor dx = NewTensor(saved.shape());
  if (saved.numel() > 0) GeluBackwardCuda(saved.data(), dy.data(), dx.data(), saved.numel());
  return dx;
}

Tensor CudaBackend::LayerNormForward(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                     float eps, Tensor* mean, Tensor* rstd) const {
  const int64_t rows = x.dim(0), dim = x.dim(1);
  *mean = NewTensor({rows});
  *rstd = NewTensor({rows});
  Tensor y = NewTensor({rows, dim});
  if (rows == 0) return y;
  LayerNormForwardCuda(x.data(), gamma.data(), beta.data(), rows, dim, eps, y.data(),
                       mean->data(), rstd->data());
  return y;
}

Tensor CudaBackend::LayerNormBackward(const Tensor& x, const Tensor& dy, const Tensor& gamma,
                                      const Tensor& mean, const Tensor& rstd, Tensor* dgamma,
                                      Tensor* dbeta) const {
  const int64_t rows = x.dim(0), dim = x.dim(1);
  Tensor dx = NewTensor({rows, dim});
  if (rows == 0) return dx;
  LayerNormBackwardCuda(x.data(), dy.data(), gamma.data(), mean.data(), rstd.data(), rows, dim,
                        dx.data(), dgamma->data(), dbeta->data());
  return dx;
}

Tensor CudaBackend::ScaleSegments(const Tensor& x, const Tensor& scales) const {
  const int64_t segments = scales.numel();
  CHECK(segments > 0 && x.numel() % segments == 0)
      << "ScaleSegments: " << x.ShapeString() << " does not split into " << segments
      << " segments";
  Tensor y = NewTensor(x.shape());
  if (x.numel() == 0) return y;
  CHECK(scales.device() == Device::kCUDA) << "ScaleSegments: the scales must be on the device";
  ScaleSegmentsCuda(x.data(), scales.data(), segments, x.numel() / segments, y.data());
  return y;
}

Tensor CudaBackend::MeanPoolTokensForward(const Tensor& x, int64_t tokens) const {
  const int64_t batch = x.dim(0) / tokens, dim = x.dim(1);
  Tensor y = NewTensor({batch, dim});
  if (y.numel() > 0) MeanPoolTokensForwardCuda(x.data(), batch, tokens, dim, y.data());
  return y;
}

Tensor CudaBackend::MeanPoolTokensBackward(const Tensor& dy, int64_t tokens) const {
  const int64_t batch = dy.dim(0), dim = dy.dim(1);
  Tensor dx = NewTensor({batch * tokens, dim});
  if (dx.numel() > 0) MeanPoolTokensBackwardCuda(dy.data(), batch, tokens, dim, dx.data());
  return dx;
}

Tensor CudaBackend::Patchify(const Tensor& images, const PatchGeometry& g) const {
  const int64_t batch = images.dim(0);
  Tensor patches = NewTensor({batch * g.tokens(), g.patch_dim()});
  if (batch > 0)
    PatchifyCuda(images.data(), batch, g.channels, g.image_size, g.patch, patches.data());
  return patches;
}

Tensor CudaBackend::Unpatchify(const Tensor& patches, const PatchGeometry& g) const {
  const int64_t batch = patches.dim(0) / g.tokens();
  Tensor images = NewTensor({batch, g.pixels()});
  if (batch > 0)
    UnpatchifyCuda(patches.data(), batch, g.channels, g.image_size, g.patch, images.data());
  return images;
}

// Labels go up as an int32 tensor; one kernel writes the per-row losses (double maths, stored as
// float), argmaxes and dlogits; losses and predictions come back to the host (small, synchronous).
Tensor CudaBackend::SoftmaxCrossEntropy(const Tensor& logits, const std::vector<int>& labels,
                                        float loss_scale, float label_smoothing,
                                        std::vector<double>* row_loss,
                                        std::vector<int>* pred) const {
  static_assert(sizeof(int) == sizeof(int32_t), "labels are copied as int32");
  const int64_t B = logits.dim(0), C = logits.dim(1);
  Tensor dlogits = NewTensor({B, C});
  row_loss->assign(B, 0.0);
  pred->assign(B, 0);
  if (B == 0) return dlogits;
  Tensor labels_dev = NewTensor({B}, DType::kInt32);
  Tensor pred_dev = NewTensor({B}, DType::kInt32);
  Tensor loss_dev = NewTensor({B});
  CUDA_CHECK(cudaMemcpy(labels_dev.int32_data(), labels.data(), B * sizeof(int32_t),
                        cudaMemcpyHostToDevice));
  SoftmaxCrossEntropyForwardCuda(logits.data(), labels_dev.int32_data(), B, C, loss_scale,
                                 label_smoothing, loss_dev.data(), pred_dev.int32_data(),
                                 dlogits.data());
  CUDA_CHECK(cudaMemcpy(pred->data(), pred_dev.int32_data(), B * sizeof(int32_t),
                        cudaMemcpyDeviceToHost));
  const std::vector<float> losses = loss_dev.ToVector();
  for (int64_t r = 0; r < B; ++r) (*row_loss)[r] = losses[r];
  return dlogits;
}

}  // namespace moe
