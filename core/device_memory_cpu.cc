// Host allocation, and the CPU-only fallbacks for device memory. When the CUDA path is compiled
// (MOE_EP_HAS_CUDA), kernels/cuda/device_memory_cuda.cu provides the CUDA branches.
#include <glog/logging.h>

#include <cstdlib>
#include <cstring>

#include "core/device_memory.h"

namespace moe {

#ifdef MOE_EP_HAS_CUDA
float* CudaAlloc(size_t bytes);
void CudaFree(float* p);
void CudaCopy(float* dst, Device dst_dev, const float* src, Device src_dev, size_t bytes);
void CudaFill(float* p, size_t count, float value);
bool CudaPathCompiled() { return true; }
#else
bool CudaPathCompiled() { return false; }
#endif

float* DeviceAlloc(Device device, size_t bytes) {
  if (device == Device::kCPU) {
    // 64-byte alignment keeps OpenBLAS and vectorised loops on their fast path.
    void* p = nullptr;
    size_t rounded = (bytes + 63) / 64 * 64;
    CHECK_EQ(posix_memalign(&p, 64, rounded), 0) << "host allocation of " << bytes << " bytes failed";
    return static_cast<float*>(p);
  }
#ifdef MOE_EP_HAS_CUDA
  return CudaAlloc(bytes);
#else
  LOG(FATAL) << "device=cuda requested but this build has no CUDA path";
  return nullptr;
#endif
}

void DeviceFree(Device device, float* ptr) {
  if (device == Device::kCPU) {
    free(ptr);
    return;
  }
#ifdef MOE_EP_HAS_CUDA
  CudaFree(ptr);
#endif
}

void DeviceCopy(float* dst, Device dst_dev, const float* src, Device src_dev, size_t bytes) {
  if (dst_dev == Device::kCPU && src_dev == Device::kCPU) {
    std::memcpy(dst, src, bytes);
    return;
  }
#ifdef MOE_EP_HAS_CUDA
  CudaCopy(dst, dst_dev, src, src_dev, bytes);
#else
  LOG(FATAL) << "device copy needs the CUDA path";
#endif
}

void DeviceFill(Device device, float* ptr, size_t count, float value) {
  if (device == Device::kCPU) {
    std::fill(ptr, ptr + count, value);
    return;
  }
#ifdef MOE_EP_HAS_CUDA
  CudaFill(ptr, count, value);
#endif
}

}  // namespace moe
