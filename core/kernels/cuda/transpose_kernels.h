// Batched matrix transpose on device pointers: the MLP-Mixer's token mixing runs its MLPs along
// the patch axis by transposing each image's [tokens, dim] block (models/layers/transpose_tokens.h).
// Checked against the host loop of TransposeTokens by tests/gpu/mixer_gpu_test.cc.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace moe {

// y[b, c, r] = x[b, r, c] for x [batch, rows, cols], y [batch, cols, rows] (row-major). A pure
// permutation (every y element written exactly once, bit-exact). Asynchronous on `stream`
// (nullptr = the legacy default stream). No aliasing.
void BatchedTransposeCuda(const float* x, int64_t batch, int64_t rows, int64_t cols, float* y,
                          cudaStream_t stream = nullptr);

}  // namespace moe
