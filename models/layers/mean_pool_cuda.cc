// MeanPoolTokens' CUDA path (see mean_pool.h): MeanPoolTokens{Forward,Backward}Cuda (sums in
// double, like the host loop). Default stream.
#ifdef MOE_EP_HAS_CUDA

#include "core/kernels/cuda/dense_kernels.h"
#include "models/layers/device_tensor.h"
#include "models/layers/mean_pool.h"

namespace moe {

Tensor MeanPoolTokens::ForwardCuda(const Tensor& x) {
  Tensor y = NewDeviceTensor({batch_, dim_});
  if (y.numel() > 0) MeanPoolTokensForwardCuda(x.data(), batch_, tokens_, dim_, y.data());
  return y;
}

Tensor MeanPoolTokens::BackwardCuda(const Tensor& dy) {
  Tensor dx = NewDeviceTensor({batch_ * tokens_, dim_});
  if (dx.numel() > 0) MeanPoolTokensBackwardCuda(dy.data(), batch_, tokens_, dim_, dx.data());
  return dx;
}

}  // namespace moe

#endif  // MOE_EP_HAS_CUDA
