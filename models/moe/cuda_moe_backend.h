// The CUDA half of moe_backend.h: a layer's CUDA planner and dispatcher over one shared
// CudaMoeContext. Compiled only with MOE_EP_HAS_CUDA.
#pragma once

#include <memory>

#include "models/moe/moe_backend.h"

namespace moe {

std::unique_ptr<MoeBackend> MakeCudaMoeBackend(const MoeLayerView& layer);

}  // namespace moe
