// Patchify's CUDA path (see patchify.h): the PatchifyCuda / UnpatchifyCuda permutation kernels,
// whose layout is PatchEmbed's and so this layer's. Default stream, like the other layers.
#ifdef MOE_EP_HAS_CUDA

#include "core/kernels/cuda/dense_kernels.h"
#include "models/layers/device_tensor.h"
#include "models/layers/patchify.h"

namespace moe {

Tensor Patchify::ForwardCuda(const Tensor& images) {
  Tensor patches = NewDeviceTensor({batch_ * tokens_, patch_dim_});
  if (batch_ > 0)
    PatchifyCuda(images.data(), batch_, channels_, image_size_, patch_, patches.data());
  return patches;
}

Tensor Patchify::BackwardCuda(const Tensor& dpatches) {
  Tensor dimages = NewDeviceTensor({batch_, channels_ * image_size_ * image_size_});
  if (batch_ > 0)
    UnpatchifyCuda(dpatches.data(), batch_, channels_, image_size_, patch_, dimages.data());
  return dimages;
}

}  // namespace moe

#endif  // MOE_EP_HAS_CUDA
