// SoftmaxCrossEntropy's CUDA path (see softmax_cross_entropy.h): labels are uploaded, one
// kernel (SoftmaxCrossEntropyForwardCuda) writes the per-row losses (double maths, stored as
// float), argmaxes and loss_scale * (softmax - onehot); losses and predictions come back to the
// host (small, synchronous) where the mean is summed in double. Default stream.
#ifdef MOE_EP_HAS_CUDA

#include <cuda_runtime_api.h>
#include <glog/logging.h>

#include <vector>

#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/dense_kernels.h"
#include "models/layers/device_tensor.h"
#include "models/layers/softmax_cross_entropy.h"

namespace moe {

float SoftmaxCrossEntropy::ForwardCuda(const Tensor& logits, const std::vector<int>& labels,
                                       float loss_scale) {
  // Forward has checked the shape and every label (on the host) before dispatching here.
  const int64_t B = logits.dim(0), C = logits.dim(1);
  labels_ = labels;
  loss_scale_ = loss_scale;
  probs_ = Tensor();
  dlogits_ = NewDeviceTensor({B, C});
  pred_.assign(B, 0);
  row_loss_.assign(B, 0.0);
  if (B == 0) return 0.f;

  // labels and pred share one device int buffer [2B] (int32 bits in a float tensor: its memory
  // is stream-ordered on the legacy stream like every Tensor, no cudaFree synchronisation);
  // row losses a float tensor [B].
  static_assert(sizeof(int) == sizeof(float), "int32 labels stored in a float tensor");
  Tensor ints_t({2 * B}, Device::kCUDA);
  int* ints = reinterpret_cast<int*>(ints_t.data());
  CUDA_CHECK(cudaMemcpy(ints, labels.data(), B * sizeof(int), cudaMemcpyHostToDevice));
  Tensor row_loss = NewDeviceTensor({B});
  SoftmaxCrossEntropyForwardCuda(logits.data(), ints, B, C, loss_scale, row_loss.data(),
                                 ints + B, dlogits_.data());
  CUDA_CHECK(cudaMemcpy(pred_.data(), ints + B, B * sizeof(int), cudaMemcpyDeviceToHost));
  const std::vector<float> losses = row_loss.ToVector();
  double total = 0;
  for (int64_t r = 0; r < B; ++r) {
    row_loss_[r] = losses[r];
    total += row_loss_[r];
  }
  return static_cast<float>(total / B);
}

}  // namespace moe

#endif  // MOE_EP_HAS_CUDA
