// MoeLinearPair's device half in a build without the CUDA path (the build system links this file
// instead of moe_linear_pair_cuda.cc). Unreachable: such a build has no device tensors (the
// backend registry refuses Device::kCUDA), so a pair never runs on one.
#include <glog/logging.h>

#include "models/moe/moe_linear_pair.h"

namespace moe {

namespace {
[[noreturn]] void NoCudaPath(const std::string& name) {
  LOG(FATAL) << name << ": a device tensor in a build without the CUDA path";
  abort();
}
}  // namespace

void MoeLinearPair::RouterInputCuda(const Tensor&) { NoCudaPath(name_); }
void MoeLinearPair::MergeGroupsCuda() { NoCudaPath(name_); }
Tensor MoeLinearPair::RoutedForwardCuda(int, const Tensor&) { NoCudaPath(name_); }
Tensor MoeLinearPair::RoutedBackwardCuda(int, const Tensor&) { NoCudaPath(name_); }
Tensor MoeLinearPair::MergedInputGradCuda(int, const Tensor&) { NoCudaPath(name_); }
void MoeLinearPair::UploadExpertPlanCuda() { NoCudaPath(name_); }
Tensor MoeLinearPair::RoutedForwardExpertsCuda(int, const Tensor&) { NoCudaPath(name_); }
Tensor MoeLinearPair::RoutedBackwardExpertsCuda(int, const Tensor&) { NoCudaPath(name_); }
void MoeLinearPair::RouterBackwardCuda(Tensor*) { NoCudaPath(name_); }
void MoeLinearPair::ZeroBiasGradColumnsCuda(int, int64_t, int64_t) { NoCudaPath(name_); }

}  // namespace moe
