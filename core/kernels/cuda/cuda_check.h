// Error checks for the CUDA runtime and cuBLAS. A failure is fatal (glog LOG(FATAL)) and reports
// file, line, the call as written and the library's own error string, e.g.
//   CUDA error at core/kernels/cuda/x.cu:42: cudaMalloc(&p, bytes) -> cudaErrorMemoryAllocation
//   (out of memory)
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <glog/logging.h>

#define CUDA_CHECK(call)                                                                       \
  do {                                                                                         \
    const cudaError_t moe_cuda_status_ = (call);                                               \
    if (moe_cuda_status_ != cudaSuccess) {                                                     \
      LOG(FATAL) << "CUDA error at " << __FILE__ << ":" << __LINE__ << ": " << #call << " -> " \
                 << cudaGetErrorName(moe_cuda_status_) << " ("                                 \
                 << cudaGetErrorString(moe_cuda_status_) << ")";                               \
    }                                                                                          \
  } while (0)

#define CUBLAS_CHECK(call)                                                                    \
  do {                                                                                        \
    const cublasStatus_t moe_cublas_status_ = (call);                                         \
    if (moe_cublas_status_ != CUBLAS_STATUS_SUCCESS) {                                        \
      LOG(FATAL) << "cuBLAS error at " << __FILE__ << ":" << __LINE__ << ": " << #call        \
                 << " -> " << cublasGetStatusName(moe_cublas_status_) << " ("                 \
                 << cublasGetStatusString(moe_cublas_status_) << ")";                         \
    }                                                                                         \
  } while (0)

// After a kernel launch: catches bad launch configurations (asynchronous faults surface at the
// next synchronising call).
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())
