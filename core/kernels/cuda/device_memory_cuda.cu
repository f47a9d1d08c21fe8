// The CUDA branches of core/device_memory.h (declared in core/device_memory_cpu.cc under
// MOE_EP_HAS_CUDA). Memory comes from cudaMalloc on the current device; copies and fills are
// ordered on the legacy default stream and complete before a host read of the result
// (cudaMemcpy synchronises with the host for device-to-host copies).
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "core/kernels/cuda/cuda_check.h"
#include "core/tensor.h"

namespace moe {

namespace {

__global__ void FillKernel(float* __restrict__ p, size_t count, float value) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    p[i] = value;
  }
}

cudaMemcpyKind CopyKind(Device dst, Device src) {
  if (src == Device::kCPU && dst == Device::kCUDA) return cudaMemcpyHostToDevice;
  if (src == Device::kCUDA && dst == Device::kCPU) return cudaMemcpyDeviceToHost;
  if (src == Device::kCUDA && dst == Device::kCUDA) return cudaMemcpyDeviceToDevice;
  return cudaMemcpyHostToHost;
}

}  // namespace

float* CudaAlloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  const cudaError_t st = cudaMalloc(&p, bytes);
  if (st != cudaSuccess) {
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    LOG(FATAL) << "cudaMalloc of " << bytes << " bytes failed: " << cudaGetErrorName(st) << " ("
               << cudaGetErrorString(st) << "); device has " << free_b << " of " << total_b
               << " bytes free";
  }
  return static_cast<float*>(p);
}

void CudaFree(float* p) {
  if (p == nullptr) return;
  const cudaError_t st = cudaFree(p);
  // Tensors freed by static destructors can outlive the CUDA runtime; that is not an error.
  if (st == cudaErrorCudartUnloading) return;
  CUDA_CHECK(st);
}

void CudaCopy(float* dst, Device dst_dev, const float* src, Device src_dev, size_t bytes) {
  if (bytes == 0) return;
  CUDA_CHECK(cudaMemcpy(dst, src, bytes, CopyKind(dst_dev, src_dev)));
}

void CudaFill(float* p, size_t count, float value) {
  if (count == 0) return;
  const int threads = 256;
  const size_t wanted = (count + threads - 1) / threads;
  const int blocks = static_cast<int>(wanted < 4096 ? wanted : 4096);
  FillKernel<<<blocks, threads>>>(p, count, value);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moe
