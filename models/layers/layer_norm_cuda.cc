// LayerNorm's CUDA path (see layer_norm.h): LayerNorm{Forward,Backward}Cuda, statistics in
// double like the host kernel; the per-row mean and rstd stay on the device for Backward.
// Default stream.
#ifdef MOE_EP_HAS_CUDA

#include <glog/logging.h>

#include "core/kernels/cuda/dense_kernels.h"
#include "models/layers/device_tensor.h"
#include "models/layers/layer_norm.h"

namespace moe {

Tensor LayerNorm::ForwardCuda(const Tensor& x) {
  CHECK(gamma_.value.device() == Device::kCUDA)
      << name_ << ": CUDA input but parameters on the host; call MoveTo(Device::kCUDA) first";
  x_ = x;
  const int64_t rows = x.dim(0);
  mean_dev_ = NewDeviceTensor({rows});
  rstd_dev_ = NewDeviceTensor({rows});
  Tensor y = NewDeviceTensor({rows, dim_});
  if (rows == 0) return y;
  LayerNormForwardCuda(x.data(), gamma_.value.data(), beta_.value.data(), rows, dim_, eps_,
                       y.data(), mean_dev_.data(), rstd_dev_.data());
  return y;
}

Tensor LayerNorm::BackwardCuda(const Tensor& dy) {
  const int64_t rows = x_.dim(0);
  Tensor dx = NewDeviceTensor({rows, dim_});
  if (rows == 0) return dx;
  LayerNormBackwardCuda(x_.data(), dy.data(), gamma_.value.data(), mean_dev_.data(),
                        rstd_dev_.data(), rows, dim_, dx.data(), gamma_.grad.data(),
                        beta_.grad.data());
  return dx;
}

}  // namespace moe

#endif  // MOE_EP_HAS_CUDA
