// Device memory for the CUDA backend (core/kernels/cuda/device_memory_cuda.h). Copies and fills
// are ordered on the legacy default stream and complete before a host read of the result
// (cudaMemcpy synchronises with the host for device-to-host copies).
//
// Memory is STREAM-ORDERED on the legacy default stream (cudaMallocAsync / cudaFreeAsync on
// cudaStreamLegacy, the device's default pool, kept cached: release threshold UINT64_MAX):
//   - freeing a Tensor never waits (cudaFree synchronised the whole device, and correctness had
//     come to depend on that: a Tensor released while kernels using it were still queued);
//   - a free is ordered after everything enqueued on the legacy stream before it, which is where
//     the dense layers and these copies and fills run;
//   - work on ANOTHER stream that uses a Tensor must be ordered explicitly: that stream waits for
//     the legacy stream after the allocation, and the legacy stream waits for that stream before
//     the last reference to the Tensor goes (the MoE layer's EnterFromLegacyStream /
//     LeaveToLegacyStream and NewDeviceTensor, models/moe/moe_layer_cuda_state.h). Scratch that
//     lives within one stream's work is better a stream-ordered buffer on that stream.
// Devices without memory pools (cudaDevAttrMemoryPoolsSupported 0) fall back to cudaMalloc /
// cudaFree, whose device-wide synchronisation is then what orders a free.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/device_memory_cuda.h"

namespace moe {

namespace {

constexpr int kFillThreads = 256;

__global__ void __launch_bounds__(kFillThreads)
    FillKernel(float* __restrict__ p, size_t count, float value) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    p[i] = value;
  }
}

// Whether Tensor memory comes from the device's default pool, stream-ordered (decided once per
// process, on the device current at the first allocation: one device per rank). The pool's
// release threshold is raised so that freed memory stays cached in the pool instead of going
// back to the driver at every synchronisation (threshold 0, the default).
bool UseStreamOrderedPool() {
  static const bool use = [] {
    int device = 0, supported = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    CUDA_CHECK(cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, device));
    if (supported == 0) {
      LOG(WARNING) << "device " << device << " has no stream-ordered memory pools: Tensor "
                   << "memory uses cudaMalloc/cudaFree (every free synchronises the device)";
      return false;
    }
    cudaMemPool_t pool = nullptr;
    CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
    uint64_t keep_all = UINT64_MAX;
    CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep_all));
    return true;
  }();
  return use;
}

cudaMemcpyKind CopyKind(Device dst, Device src) {
  if (src == Device::kCPU && dst == Device::kCUDA) return cudaMemcpyHostToDevice;
  if (src == Device::kCUDA && dst == Device::kCPU) return cudaMemcpyDeviceToHost;
  if (src == Device::kCUDA && dst == Device::kCUDA) return cudaMemcpyDeviceToDevice;
  return cudaMemcpyHostToHost;
}

}  // namespace

void* CudaAlloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  const cudaError_t st = UseStreamOrderedPool() ? cudaMallocAsync(&p, bytes, cudaStreamLegacy)
                                                : cudaMalloc(&p, bytes);
  if (st != cudaSuccess) {
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    LOG(FATAL) << "allocation of " << bytes << " bytes on the device failed: "
               << cudaGetErrorName(st) << " (" << cudaGetErrorString(st) << "); device has "
               << free_b << " of " << total_b << " bytes free";
  }
  return p;
}

void CudaFree(void* p) {
  if (p == nullptr) return;
  const cudaError_t st = UseStreamOrderedPool() ? cudaFreeAsync(p, cudaStreamLegacy) : cudaFree(p);
  // Tensors freed by static destructors can outlive the CUDA runtime; that is not an error.
  if (st == cudaErrorCudartUnloading) return;
  CUDA_CHECK(st);
}

void CudaCopy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes) {
  if (bytes == 0) return;
  CUDA_CHECK(cudaMemcpy(dst, src, bytes, CopyKind(dst_dev, src_dev)));
}

void CudaFill(float* p, size_t count, float value) {
  if (count == 0) return;
  const size_t wanted = (count + kFillThreads - 1) / kFillThreads;
  const int blocks = static_cast<int>(wanted < 4096 ? wanted : 4096);
  FillKernel<<<blocks, kFillThreads>>>(p, count, value);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moe
