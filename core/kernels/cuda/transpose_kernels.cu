#include "core/kernels/cuda/transpose_kernels.h"

#include <cuda_runtime.h>
#include <glog/logging.h>

#include <algorithm>
#include <cstdint>

#include "core/kernels/cuda/cuda_check.h"

// Launch shape: block (32, 8) moves one 32 x 32 tile through shared memory (each thread 4
// elements), so both the global read (along a source row) and the global write (along a
// destination row) are coalesced. The tile has 33 columns so that the column-wise shared reads
// fall in distinct banks. Grid (tiles along cols, tiles along rows, batch), each dimension capped
// at 65535 and looped grid-stride, so any int64 size is covered; the loop bounds depend only on
// block indices, so every thread of a block reaches each __syncthreads.
namespace moe {

namespace {

constexpr int kTile = 32;
constexpr int kRowsPerPass = 8;
constexpr int64_t kMaxGrid = 65535;

__global__ void __launch_bounds__(kTile * kRowsPerPass)
    BatchedTransposeKernel(const float* __restrict__ x, int64_t batch, int64_t rows, int64_t cols,
                           float* __restrict__ y) {
  __shared__ float tile[kTile][kTile + 1];
  const int64_t tiles_c = (cols + kTile - 1) / kTile;
  const int64_t tiles_r = (rows + kTile - 1) / kTile;
  const int64_t plane = rows * cols;
  for (int64_t b = blockIdx.z; b < batch; b += gridDim.z) {
    const float* xb = x + b * plane;
    float* yb = y + b * plane;
    for (int64_t tr = blockIdx.y; tr < tiles_r; tr += gridDim.y) {
      for (int64_t tc = blockIdx.x; tc < tiles_c; tc += gridDim.x) {
        const int64_t r0 = tr * kTile, c0 = tc * kTile;
        for (int i = threadIdx.y; i < kTile; i += kRowsPerPass) {
          const int64_t r = r0 + i, c = c0 + threadIdx.x;
          if (r < rows && c < cols) tile[i][threadIdx.x] = xb[r * cols + c];
        }
        __syncthreads();
        // Destination row = source column c0 + i, destination column = source row r0 + tx.
        for (int i = threadIdx.y; i < kTile; i += kRowsPerPass) {
          const int64_t c = c0 + i, r = r0 + threadIdx.x;
          if (r < rows && c < cols) yb[c * rows + r] = tile[threadIdx.x][i];
        }
        __syncthreads();  // the tile is rewritten by the next iteration
      }
    }
  }
}

}  // namespace

void BatchedTransposeCuda(const float* x, int64_t batch, int64_t rows, int64_t cols, float* y,
                          cudaStream_t stream) {
  CHECK(batch >= 0 && rows >= 0 && cols >= 0)
      << "BatchedTransposeCuda: negative size " << batch << " x " << rows << " x " << cols;
  if (batch == 0 || rows == 0 || cols == 0) return;
  CHECK(x != y) << "BatchedTransposeCuda: x and y must not alias";
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>((cols + kTile - 1) / kTile, kMaxGrid)),
                  static_cast<unsigned>(std::min<int64_t>((rows + kTile - 1) / kTile, kMaxGrid)),
                  static_cast<unsigned>(std::min<int64_t>(batch, kMaxGrid)));
  BatchedTransposeKernel<<<grid, dim3(kTile, kRowsPerPass), 0, stream>>>(x, batch, rows, cols, y);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moe
