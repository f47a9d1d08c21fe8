// CudaBackend (core/kernels/cuda/cuda_backend.h): the optimizer side of a training step on device
// tensors. Norms are per-tensor cublasSnrm2 (float, device pointer mode) squared and summed in
// double on the host after one small device-to-host copy (the host sums squares in double, so a
// norm can differ in the last float bits); scaling is cublasSscal; AdamW is AdamWStepCuda, which
// reproduces the host update bit for bit. Legacy default stream throughout.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <glog/logging.h>

#include "core/kernels/cuda/adamw_kernels.h"
#include "core/kernels/cuda/cublas_gemm.h"
#include "core/kernels/cuda/cuda_backend.h"
#include "core/kernels/cuda/cuda_check.h"

namespace moe {

void CudaBackend::AdamWStep(Tensor* w, const Tensor& g, Tensor* m, Tensor* v,
                            const AdamWStepScalars& s) const {
  AdamWStepCuda(w->data(), g.data(), m->data(), v->data(), w->numel(), s.lr, s.beta1, s.beta2,
                s.eps, s.weight_decay, s.step, nullptr);
}

std::vector<double> CudaBackend::SquaredNormsByGroup(const std::vector<const Tensor*>& tensors,
                                                     const std::vector<int>& group,
                                                     int groups) const {
  CHECK_EQ(tensors.size(), group.size());
  std::vector<double> sums(groups, 0.0);
  if (tensors.empty()) return sums;
  Tensor norms_dev = NewTensor({static_cast<int64_t>(tensors.size())});
  cublasHandle_t h = ThreadCublasHandle();
  CUBLAS_CHECK(cublasSetStream(h, nullptr));
  CUBLAS_CHECK(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_DEVICE));
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = *tensors[i];
    CHECK_LT(t.numel(), int64_t{1} << 31) << "tensor " << i << " too large for cublasSnrm2";
    CUBLAS_CHECK(cublasSnrm2(h, static_cast<int>(t.numel()), t.data(), 1, norms_dev.data() + i));
  }
  CUBLAS_CHECK(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_HOST));
  const std::vector<float> norms = norms_dev.ToVector();
  for (size_t i = 0; i < tensors.size(); ++i) sums.at(group[i]) += double(norms[i]) * norms[i];
  return sums;
}

void CudaBackend::Scale(Tensor* t, float s) const {
  cublasHandle_t h = ThreadCublasHandle();
  CUBLAS_CHECK(cublasSetStream(h, nullptr));
  CUBLAS_CHECK(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_HOST));  // s is a host scalar
  CUBLAS_CHECK(cublasSscal(h, static_cast<int>(t->numel()), &s, t->data(), 1));
}

void CudaBackend::FlattenInto(const std::vector<const Tensor*>& tensors, Tensor* bucket) const {
  int64_t off = 0;
  for (const Tensor* t : tensors) {
    CHECK_LE(off + t->numel(), bucket->numel()) << "gradient bucket too small";
    CUDA_CHECK(cudaMemcpyAsync(bucket->data() + off, t->data(), t->numel() * sizeof(float),
                               cudaMemcpyDeviceToDevice, nullptr));
    off += t->numel();
  }
}

void CudaBackend::UnflattenFrom(const Tensor& bucket, const std::vector<Tensor*>& tensors) const {
  int64_t off = 0;
  for (Tensor* t : tensors) {
    CHECK_LE(off + t->numel(), bucket.numel()) << "gradient bucket too small";
    CUDA_CHECK(cudaMemcpyAsync(t->data(), bucket.data() + off, t->numel() * sizeof(float),
                               cudaMemcpyDeviceToDevice, nullptr));
    off += t->numel();
  }
}

}  // namespace moe
