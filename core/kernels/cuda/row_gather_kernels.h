// Row gather / scatter kernels on device pointers for index lists whose rows are DISTINCT within
// one call (MoeLinearPair's per-expert path: a row appears at most once per expert), so the
// scatter-adds need no atomics and every result is bit-reproducible run to run. Indices are int32
// device arrays (rows < 2^31). Launches are asynchronous on `stream` (nullptr = the legacy
// default stream); launch errors are fatal (CUDA_CHECK_LAUNCH).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace moe {

// dst[j, :] = (scale ? scale[j] : 1) * src[idx[j], :] for j < n; src [*, D], dst [n, D]
// (written). The scaling is one float multiply, like the host's g * dy.
void GatherRowsCuda(const float* src, const int* idx, const float* scale, int64_t n, int64_t D,
                    float* dst, cudaStream_t stream = nullptr);

// dst[idx[j], :] += (scale ? scale[j] : 1) * src[j, :] for j < n; the idx[j] must be distinct.
// Float multiply then add (no FMA), like the host's Axpy.
void ScatterAddRowsCuda(const float* src, const int* idx, const float* scale, int64_t n,
                        int64_t D, float* dst, cudaStream_t stream = nullptr);

// out[j] = <a[idx[j], :], b[j, :]> for j < n, summed in double (written as float).
void GatheredRowDotsCuda(const float* a, const int* idx, const float* b, int64_t n, int64_t D,
                         float* out, cudaStream_t stream = nullptr);

}  // namespace moe
