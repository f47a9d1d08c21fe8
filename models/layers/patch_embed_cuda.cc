// PatchEmbed's CUDA path (see patch_embed.h): PatchifyCuda, the projection through Linear's CUDA
// path, pos_embed added per image by BiasAddRowsCuda (rows = B, cols = T*D) and its gradient
// summed over images by ColumnSumAccumulateCuda; UnpatchifyCuda for d(images). Default stream.
#ifdef MOE_EP_HAS_CUDA

#include <glog/logging.h>

#include "core/kernels/cuda/dense_kernels.h"
#include "models/layers/device_tensor.h"
#include "models/layers/patch_embed.h"

namespace moe {

Tensor PatchEmbed::ForwardCuda(const Tensor& images) {
  CHECK(pos_.value.device() == Device::kCUDA)
      << name_ << ": CUDA input but parameters on the host; call MoveTo(Device::kCUDA) first";
  Tensor patches = NewDeviceTensor({batch_ * tokens_, patch_dim_});
  if (batch_ > 0)
    PatchifyCuda(images.data(), batch_, channels_, image_size_, patch_, patches.data());
  Tensor y = proj_.Forward(patches);  // proj_ keeps `patches` for its weight gradient
  if (batch_ > 0) BiasAddRowsCuda(y.data(), pos_.value.data(), batch_, tokens_ * dim_);
  return y;
}

Tensor PatchEmbed::BackwardCuda(const Tensor& dy) {
  if (batch_ > 0) ColumnSumAccumulateCuda(dy.data(), batch_, tokens_ * dim_, pos_.grad.data());
  const Tensor dpatches = proj_.Backward(dy);
  Tensor dimages = NewDeviceTensor({batch_, channels_ * image_size_ * image_size_});
  if (batch_ > 0)
    UnpatchifyCuda(dpatches.data(), batch_, channels_, image_size_, patch_, dimages.data());
  return dimages;
}

}  // namespace moe

#endif  // MOE_EP_HAS_CUDA
