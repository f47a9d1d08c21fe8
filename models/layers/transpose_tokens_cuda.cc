// TransposeTokens' CUDA path (see transpose_tokens.h): BatchedTransposeCuda, one image per
// batch entry. Default stream.
#ifdef MOE_EP_HAS_CUDA

#include "core/kernels/cuda/transpose_kernels.h"
#include "models/layers/device_tensor.h"
#include "models/layers/transpose_tokens.h"

namespace moe {

Tensor TransposeTokens::ForwardCuda(const Tensor& x) {
  Tensor y = NewDeviceTensor({batch_ * dim_, tokens_});
  BatchedTransposeCuda(x.data(), batch_, tokens_, dim_, y.data());
  return y;
}

Tensor TransposeTokens::BackwardCuda(const Tensor& dy) {
  Tensor dx = NewDeviceTensor({batch_ * tokens_, dim_});
  BatchedTransposeCuda(dy.data(), batch_, dim_, tokens_, dx.data());
  return dx;
}

}  // namespace moe

#endif  // MOE_EP_HAS_CUDA
