// Device memory on the legacy default stream, for the CUDA backend's memory ops
// (core/kernels/cuda/cuda_backend.h): stream-ordered allocation from the device's default pool
// (see device_memory_cuda.cu for the ordering contract), copies in any direction, a float fill.
#pragma once

#include <cstddef>

#include "core/tensor.h"

namespace moe {

void* CudaAlloc(size_t bytes);  // nullptr for 0 bytes; fatal when the device is out of memory
void CudaFree(void* p);         // nullptr is ignored
void CudaCopy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes);
void CudaFill(float* p, size_t count, float value);

}  // namespace moe
