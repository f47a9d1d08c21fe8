// gpu_device_count: whether this machine has a usable CUDA device, as an exit code, so scripts
// decide "no GPU" from a structured signal rather than from the wording of an error message
// (tests/gpu/verify.sh). Exit 0: at least one device (prints "cuda devices: N"); exit 77: none
// usable (prints why: cudaGetDeviceCount's error name, e.g. cudaErrorNoDevice or
// cudaErrorInsufficientDriver, or a count of 0). Needs no GPU to run.
#include <cuda_runtime_api.h>

#include <cstdio>

int main() {
  constexpr int kNoUsableGpu = 77;
  int count = 0;
  const cudaError_t st = cudaGetDeviceCount(&count);
  if (st != cudaSuccess) {
    std::printf("no usable GPU: cudaGetDeviceCount -> %s\n", cudaGetErrorName(st));
    return kNoUsableGpu;
  }
  if (count == 0) {
    std::printf("no usable GPU: cudaGetDeviceCount reports 0 devices\n");
    return kNoUsableGpu;
  }
  std::printf("cuda devices: %d\n", count);
  return 0;
}
