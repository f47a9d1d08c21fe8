// Residual's CUDA path (see residual.h): the skip add is AddInPlaceCuda on the default stream,
// where the branch layers launch too, so it is ordered after the branch's last kernel.
#ifdef MOE_EP_HAS_CUDA

#include "core/kernels/cuda/dense_kernels.h"
#include "models/layers/residual.h"

namespace moe {

void Residual::AddInPlaceCudaPath(Tensor* a, const Tensor& b) {
  if (a->numel() > 0) AddInPlaceCuda(a->data(), b.data(), a->numel());
}

}  // namespace moe

#endif  // MOE_EP_HAS_CUDA
