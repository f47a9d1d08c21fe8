// Shared by the GPU tests: skip (never pass) without a usable GPU, and a NaN-poisoned device
// buffer so that every output element a kernel should write is checked written.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <vector>

#include "core/kernels/cuda/cuda_check.h"

namespace moe {

// True when at least one CUDA device is usable; otherwise *why says what the runtime reported.
inline bool GpuAvailable(std::string* why) {
  int count = 0;
  const cudaError_t st = cudaGetDeviceCount(&count);
  if (st != cudaSuccess) {
    *why = std::string("no usable GPU: cudaGetDeviceCount failed with ") + cudaGetErrorName(st) +
           " (" + cudaGetErrorString(st) + ")";
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return false;
  }
  if (count == 0) {
    *why = "no usable GPU: cudaGetDeviceCount reports 0 devices";
    return false;
  }
  return true;
}

#define SKIP_WITHOUT_GPU()                      \
  do {                                          \
    std::string why_;                           \
    if (!GpuAvailable(&why_)) GTEST_SKIP() << why_; \
  } while (0)

// Device buffer for a test; poisoned with NaN so unwritten elements are caught.
struct DeviceBuffer {
  explicit DeviceBuffer(size_t n) : n(n) {
    CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p), (n ? n : 1) * sizeof(float)));
  }
  ~DeviceBuffer() { cudaFree(p); }
  void Upload(const std::vector<float>& v) {
    CUDA_CHECK(cudaMemcpy(p, v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice));
  }
  void Poison() { Upload(std::vector<float>(n, std::numeric_limits<float>::quiet_NaN())); }
  std::vector<float> Download() const {
    std::vector<float> v(n);
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(v.data(), p, n * sizeof(float), cudaMemcpyDeviceToHost));
    return v;
  }
  float* p = nullptr;
  size_t n;
};

}  // namespace moe
