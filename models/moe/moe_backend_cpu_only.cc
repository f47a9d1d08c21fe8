// The CUDA factories of moe_backend.h and expert_compute.h in a build without the CUDA path (the
// build system links this file instead of the cuda_*.cc / *_cuda.cc ones). Unreachable: such a
// build admits no device (core/backend.h), so no MoE layer input ever lives on one.
#include <glog/logging.h>

#include "models/moe/expert_compute.h"
#include "models/moe/moe_backend.h"

namespace moe {

std::unique_ptr<MoeBackend> MakeCudaMoeBackend(const MoeLayerView& layer) {
  LOG(FATAL) << layer.name << ": input on device cuda, but this build has no CUDA path";
  return nullptr;
}

bool CudaDispatcherAvailable(DispatcherKind) { return false; }

std::unique_ptr<ExpertCompute> MakeCudaExpertCompute(void*) {
  LOG(FATAL) << "expert bank: input on device cuda, but this build has no CUDA path";
  return nullptr;
}

}  // namespace moe
