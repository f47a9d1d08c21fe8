// The backend registry: the one place that maps a Device to its implementation, and the only
// place outside CUDA-only files that knows whether the CUDA path was built.
#include "core/backend.h"

#include <glog/logging.h>

#include <atomic>

#include "core/cpu_backend.h"
#ifdef MOE_EP_HAS_CUDA
#include "core/kernels/cuda/cuda_backend.h"
#endif

namespace moe {

namespace {
std::atomic<bool> g_poison{false};
}  // namespace

const Backend& BackendFor(Device device) {
  if (device == Device::kCPU) return TheCpuBackend();
#ifdef MOE_EP_HAS_CUDA
  return TheCudaBackend();
#else
  LOG(FATAL) << "device " << DeviceName(device) << ": this build has no CUDA path";
  __builtin_unreachable();
#endif
}

bool BackendAvailable(Device device) {
#ifdef MOE_EP_HAS_CUDA
  (void)device;
  return true;
#else
  return device == Device::kCPU;
#endif
}

void Backend::CopyElements(Tensor* dst, int64_t dst_offset, const Tensor& src,
                           int64_t src_offset, int64_t count) const {
  CHECK(dst_offset >= 0 && src_offset >= 0 && count >= 0 && dst_offset + count <= dst->numel() &&
        src_offset + count <= src.numel())
      << "CopyElements: [" << src_offset << ", +" << count << ") of " << src.ShapeString()
      << " into [" << dst_offset << ", ...) of " << dst->ShapeString();
  if (count > 0)
    Copy(dst->data() + dst_offset, dst->device(), src.data() + src_offset, src.device(),
         static_cast<size_t>(count) * sizeof(float));
}

void SetPoisonNewDeviceTensors(bool on) { g_poison.store(on, std::memory_order_relaxed); }
bool PoisonNewDeviceTensors() { return g_poison.load(std::memory_order_relaxed); }

}  // namespace moe
