// Raw allocation per device. The CUDA implementation lives in kernels/cuda and is linked only
// when the CUDA path is built; on a CPU-only build asking for device memory is a clear error.
#pragma once
#include <cstddef>
#include "core/tensor.h"

namespace moe {
float* DeviceAlloc(Device device, size_t bytes);
void DeviceFree(Device device, float* ptr);
void DeviceCopy(float* dst, Device dst_dev, const float* src, Device src_dev, size_t bytes);
void DeviceFill(Device device, float* ptr, size_t count, float value);
bool CudaPathCompiled();
}  // namespace moe
