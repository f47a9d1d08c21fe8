// MultiHeadSelfAttention's CUDA path (see attention.h), the host loops' maths on the device:
// qkv and proj through Linear's CUDA path; the per-(image, head) products as one
// CudaSgemmStridedBatched per head, batched over the images (an image's Q/K/V block starts
// T*3D floats after the previous one's, its probabilities H*T*T, its context rows T*D; the
// (image, head) pair is not one linear stride since heads step dh columns inside an image); the
// row softmax and its backward over all B*H*T rows at once. Backward keeps the full dP / dS
// [B, H, T, T] on the device (the host path reuses one T x T scratch) so the products batch.
// Default stream throughout. The core between the projections is a pair of free functions
// (SelfAttentionCore{Forward,Backward}Cuda) because the conditional family's routed attention
// (models/nets/conditional_vit.cc) runs the same core between routed projections.
#ifdef MOE_EP_HAS_CUDA

#include <cuda_runtime_api.h>
#include <glog/logging.h>

#include <cmath>

#include "core/kernels/cuda/cublas_gemm.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/dense_kernels.h"
#include "models/layers/attention.h"
#include "models/layers/device_tensor.h"

namespace moe {

Tensor SelfAttentionCoreForwardCuda(const Tensor& qkv_t, int64_t B, int64_t H, int64_t T,
                                    int64_t D, Tensor* probs) {
  const int64_t dh = D / H, ld = 3 * D;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dh)));
  *probs = NewDeviceTensor({B, H, T, T});
  Tensor ctx = NewDeviceTensor({B * T, D});
  if (B > 0) {
    const float* qkv = qkv_t.data();
    float* p = probs->data();
    for (int64_t h = 0; h < H; ++h) {
      // S = Q K^T / sqrt(dh), for every image.
      CudaSgemmStridedBatched(false, true, T, T, dh, scale, qkv + h * dh, ld, T * ld,
                              qkv + D + h * dh, ld, T * ld, 0.f, p + h * T * T, T, H * T * T, B);
    }
    SoftmaxForwardRowsCuda(p, B * H * T, T, p);
    for (int64_t h = 0; h < H; ++h) {
      // O = P V into the head's dh columns of the context.
      CudaSgemmStridedBatched(false, false, T, dh, T, 1.f, p + h * T * T, T, H * T * T,
                              qkv + 2 * D + h * dh, ld, T * ld, 0.f, ctx.data() + h * dh, D,
                              T * D, B);
    }
  }
  return ctx;
}

Tensor SelfAttentionCoreBackwardCuda(const Tensor& qkv_t, const Tensor& probs, const Tensor& dctx,
                                     int64_t B, int64_t H, int64_t T, int64_t D) {
  const int64_t dh = D / H, ld = 3 * D;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dh)));
  Tensor dqkv = NewDeviceTensor({B * T, ld});
  if (B > 0) {
    Tensor dp = NewDeviceTensor({B, H, T, T});
    const float* qkv = qkv_t.data();
    const float* p = probs.data();
    float* dq = dqkv.data();
    for (int64_t h = 0; h < H; ++h) {
      const float* dout = dctx.data() + h * dh;
      // dP = dO V^T; dV = P^T dO.
      CudaSgemmStridedBatched(false, true, T, T, dh, 1.f, dout, D, T * D, qkv + 2 * D + h * dh,
                              ld, T * ld, 0.f, dp.data() + h * T * T, T, H * T * T, B);
      CudaSgemmStridedBatched(true, false, T, dh, T, 1.f, p + h * T * T, T, H * T * T, dout, D,
                              T * D, 0.f, dq + 2 * D + h * dh, ld, T * ld, B);
    }
    // dS = softmax'(dP), in place, every row at once.
    SoftmaxBackwardRowsCuda(p, dp.data(), B * H * T, T, dp.data());
    for (int64_t h = 0; h < H; ++h) {
      const float* ds = dp.data() + h * T * T;
      // dQ = dS K / sqrt(dh); dK = dS^T Q / sqrt(dh).
      CudaSgemmStridedBatched(false, false, T, dh, T, scale, ds, T, H * T * T, qkv + D + h * dh,
                              ld, T * ld, 0.f, dq + h * dh, ld, T * ld, B);
      CudaSgemmStridedBatched(true, false, T, dh, T, scale, ds, T, H * T * T, qkv + h * dh, ld,
                              T * ld, 0.f, dq + D + h * dh, ld, T * ld, B);
    }
  }
  return dqkv;
}

Tensor MultiHeadSelfAttention::ForwardCuda(const Tensor& x) {
  qkv_out_ = qkv_.Forward(x);  // checks the parameters are on the device
  return proj_.Forward(
      SelfAttentionCoreForwardCuda(qkv_out_, batch_, heads_, tokens_, dim_, &probs_));
}

Tensor MultiHeadSelfAttention::BackwardCuda(const Tensor& dy) {
  const int64_t D = dim_;
  Tensor dqkv = SelfAttentionCoreBackwardCuda(qkv_out_, probs_, proj_.Backward(dy), batch_,
                                              heads_, tokens_, dim_);
  // The key bias's gradient is exactly zero (see attention.cc): keep the key-bias slice of the
  // bias gradient as it was before the Linear backward, as the host path does.
  Parameter* bias = qkv_.bias();
  Tensor key_bias_grad;
  if (bias) {
    key_bias_grad = Tensor({D}, Device::kCUDA);
    CUDA_CHECK(cudaMemcpy(key_bias_grad.data(), bias->grad.data() + D, D * sizeof(float),
                          cudaMemcpyDeviceToDevice));
  }
  Tensor dx = qkv_.Backward(dqkv);
  if (bias) {
    CUDA_CHECK(cudaMemcpy(bias->grad.data() + D, key_bias_grad.data(), D * sizeof(float),
                          cudaMemcpyDeviceToDevice));
  }
  return dx;
}

}  // namespace moe

#endif  // MOE_EP_HAS_CUDA
