#include "core/kernels/cuda/dense_kernels.h"

#include <cuda_runtime.h>
#include <glog/logging.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "core/kernels/cpu/exp_f32.h"
#include "core/kernels/cuda/cuda_check.h"

// Launch shapes used below (all block sizes are compile-time constants, so no launch can exceed
// the 1024-threads-per-block limit; grids are capped at 65535 blocks in x and every kernel loops
// grid-stride over its work, so any int64 size is covered):
//   elementwise (bias add, residual add, mean-pool backward, patchify, unpatchify):
//     256 threads/block, one element (or one float4) per thread per iteration.
//   row kernels (LayerNorm, softmax, cross-entropy): 256 threads/block = 8 warps, one warp per
//     row, rows grid-stride; lanes stride the row by 32 (x4 with float4). All of a row's lanes
//     stay converged at the full-mask shuffles: the row loop bound is warp-uniform.
//   column reductions (LayerNorm dgamma/dbeta, ColumnSumAccumulate): stage 1 block (32, 8),
//     grid (ceil(cols/32), chunks <= 1024): 32 adjacent columns x one chunk of rows, each of the
//     8 thread rows summing every 8th row of the chunk in double, then the 8 partials summed in
//     a fixed order through shared memory into part[chunk, col]; stage 2 one thread per column
//     sums the chunks in order and adds the float result to the gradient. No atomics anywhere.
// Limits: softmax forward keeps rows of <= 1024 columns in registers (<= 32 floats per lane;
// longer rows take the three-pass kernel); every other kernel takes any row length. Scratch of
// the column reductions: chunks * cols * 8 (x2 for LayerNorm) bytes, chunks <= max(1, 1024/tiles),
// i.e. at most ~256 KiB or one row of partials, from cudaMallocAsync on the launch stream.
namespace moe {

namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;
constexpr int kMaxGrid = 65535;
constexpr unsigned kFullMask = 0xffffffffu;

bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

int BlocksFor(int64_t work) {
  const int64_t b = (std::max<int64_t>(work, 1) + kThreads - 1) / kThreads;
  return static_cast<int>(std::min<int64_t>(b, kMaxGrid));
}

int BlocksForRows(int64_t rows) {
  const int64_t b = (std::max<int64_t>(rows, 1) + kWarpsPerBlock - 1) / kWarpsPerBlock;
  return static_cast<int>(std::min<int64_t>(b, kMaxGrid));
}

__device__ __forceinline__ int64_t GlobalThread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t GridThreads() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}
// Row loop for one-warp-per-row kernels: first row of this warp and the stride.
__device__ __forceinline__ int64_t FirstWarpRow() {
  return static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
}
__device__ __forceinline__ int64_t WarpRowStride() {
  return static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
}

// Butterfly reductions: every lane ends with the same bits (each step adds the same two values
// in either order, and IEEE addition is commutative).
__device__ __forceinline__ double WarpSum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}
__device__ __forceinline__ float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// ---------------------------------------------------------------------------------------------
// LayerNorm forward: one warp per row. kVec: dim % 4 == 0 and x, y, gamma, beta 16-byte aligned.
// Each lane touches only its own columns in all three passes, so y may alias x.

// This lane's share of the row sum (double), over its own columns.
template <bool kVec>
__device__ __forceinline__ double LaneRowSum(const float* xr, int64_t dim, int lane) {
  double s = 0;
  if (kVec) {
    const float4* x4 = reinterpret_cast<const float4*>(xr);
    for (int64_t j = lane; j < dim / 4; j += 32) {
      const float4 v = x4[j];
      s += static_cast<double>(v.x) + v.y + v.z + v.w;
    }
  } else {
    for (int64_t j = lane; j < dim; j += 32) s += xr[j];
  }
  return s;
}

// This lane's share of the row's sum of squared deviations from mu (double).
template <bool kVec>
__device__ __forceinline__ double LaneRowSquaredDeviation(const float* xr, int64_t dim, int lane,
                                                          double mu) {
  double ss = 0;
  if (kVec) {
    const float4* x4 = reinterpret_cast<const float4*>(xr);
    for (int64_t j = lane; j < dim / 4; j += 32) {
      const float4 v = x4[j];
      const double a = v.x - mu, b = v.y - mu, c = v.z - mu, d = v.w - mu;
      ss += a * a + b * b + c * c + d * d;
    }
  } else {
    for (int64_t j = lane; j < dim; j += 32) {
      const double d = xr[j] - mu;
      ss += d * d;
    }
  }
  return ss;
}

// y = float(xhat) * gamma + beta on this lane's columns, rounded like the CPU (no FMA
// contraction).
template <bool kVec>
__device__ __forceinline__ void LayerNormWriteRow(const float* xr, const float* gamma,
                                                  const float* beta, int64_t dim, int lane,
                                                  double mu, double inv, float* yr) {
  if (kVec) {
    const float4* x4 = reinterpret_cast<const float4*>(xr);
    const float4* g4 = reinterpret_cast<const float4*>(gamma);
    const float4* b4 = reinterpret_cast<const float4*>(beta);
    float4* y4 = reinterpret_cast<float4*>(yr);
    for (int64_t j = lane; j < dim / 4; j += 32) {
      const float4 v = x4[j], g = g4[j], b = b4[j];
      float4 o;
      o.x = __fadd_rn(__fmul_rn(static_cast<float>((v.x - mu) * inv), g.x), b.x);
      o.y = __fadd_rn(__fmul_rn(static_cast<float>((v.y - mu) * inv), g.y), b.y);
      o.z = __fadd_rn(__fmul_rn(static_cast<float>((v.z - mu) * inv), g.z), b.z);
      o.w = __fadd_rn(__fmul_rn(static_cast<float>((v.w - mu) * inv), g.w), b.w);
      y4[j] = o;
    }
  } else {
    for (int64_t j = lane; j < dim; j += 32) {
      const float h = static_cast<float>((xr[j] - mu) * inv);
      yr[j] = __fadd_rn(__fmul_rn(h, gamma[j]), beta[j]);
    }
  }
}

template <bool kVec>
__global__ void __launch_bounds__(kThreads)
    LayerNormForwardKernel(const float* x, const float* gamma, const float* beta, int64_t rows,
                           int64_t dim, float eps, float* y, float* mean, float* rstd) {
  const int lane = threadIdx.x & 31;
  for (int64_t r = FirstWarpRow(); r < rows; r += WarpRowStride()) {
    const float* xr = x + r * dim;
    const double mu = WarpSum(LaneRowSum<kVec>(xr, dim, lane)) / dim;
    const double inv =
        1.0 / sqrt(WarpSum(LaneRowSquaredDeviation<kVec>(xr, dim, lane, mu)) / dim + eps);
    if (lane == 0) {
      mean[r] = static_cast<float>(mu);
      rstd[r] = static_cast<float>(inv);
    }
    LayerNormWriteRow<kVec>(xr, gamma, beta, dim, lane, mu, inv, y + r * dim);
  }
}

// LayerNorm backward, dx only: one warp per row.
//   dx = rstd * (g - mean_j(g) - xhat * mean_j(g * xhat)),  g = dy * gamma, in double.
// Each lane touches only its own columns, so dx may alias dy.
template <bool kVec>
__global__ void __launch_bounds__(kThreads)
    LayerNormBackwardDxKernel(const float* x, const float* dy, const float* gamma,
                              const float* mean, const float* rstd, int64_t rows, int64_t dim,
                              float* dx) {
  const int lane = threadIdx.x & 31;
  for (int64_t r = FirstWarpRow(); r < rows; r += WarpRowStride()) {
    const float* xr = x + r * dim;
    const float* dyr = dy + r * dim;
    float* dxr = dx + r * dim;
    const double mu = mean[r], inv = rstd[r];
    double sum_g = 0, sum_gx = 0;
    if (kVec) {
      const float4* x4 = reinterpret_cast<const float4*>(xr);
      const float4* d4 = reinterpret_cast<const float4*>(dyr);
      const float4* g4 = reinterpret_cast<const float4*>(gamma);
      for (int64_t j = lane; j < dim / 4; j += 32) {
        const float4 v = x4[j], d = d4[j], g = g4[j];
        const double ga = static_cast<double>(d.x) * g.x, gb = static_cast<double>(d.y) * g.y;
        const double gc = static_cast<double>(d.z) * g.z, gd = static_cast<double>(d.w) * g.w;
        sum_g += ga + gb + gc + gd;
        sum_gx += ga * ((v.x - mu) * inv) + gb * ((v.y - mu) * inv) + gc * ((v.z - mu) * inv) +
                  gd * ((v.w - mu) * inv);
      }
    } else {
      for (int64_t j = lane; j < dim; j += 32) {
        const double xhat = (xr[j] - mu) * inv;
        const double g = static_cast<double>(dyr[j]) * gamma[j];
        sum_g += g;
        sum_gx += g * xhat;
      }
    }
    const double mg = WarpSum(sum_g) / dim, mgx = WarpSum(sum_gx) / dim;
    if (kVec) {
      const float4* x4 = reinterpret_cast<const float4*>(xr);
      const float4* d4 = reinterpret_cast<const float4*>(dyr);
      const float4* g4 = reinterpret_cast<const float4*>(gamma);
      float4* o4 = reinterpret_cast<float4*>(dxr);
      for (int64_t j = lane; j < dim / 4; j += 32) {
        const float4 v = x4[j], d = d4[j], g = g4[j];
        float4 o;
        o.x = static_cast<float>(inv * (static_cast<double>(d.x) * g.x - mg - ((v.x - mu) * inv) * mgx));
        o.y = static_cast<float>(inv * (static_cast<double>(d.y) * g.y - mg - ((v.y - mu) * inv) * mgx));
        o.z = static_cast<float>(inv * (static_cast<double>(d.z) * g.z - mg - ((v.z - mu) * inv) * mgx));
        o.w = static_cast<float>(inv * (static_cast<double>(d.w) * g.w - mg - ((v.w - mu) * inv) * mgx));
        o4[j] = o;
      }
    } else {
      for (int64_t j = lane; j < dim; j += 32) {
        const double xhat = (xr[j] - mu) * inv;
        dxr[j] = static_cast<float>(inv * (static_cast<double>(dyr[j]) * gamma[j] - mg - xhat * mgx));
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Deterministic column sums over rows (stage 1 of 2). Block (32, 8), grid (ceil(cols/32),
// chunks). kLn: part_a = sum dy * xhat, part_b = sum dy (LayerNorm's dgamma, dbeta);
// otherwise part_a = sum dy. part_*: [chunks, cols] doubles.
constexpr int kColTileX = 32, kColTileY = 8;

template <bool kLn>
__global__ void __launch_bounds__(kColTileX * kColTileY)
    ColumnPartialKernel(const float* __restrict__ dy, const float* __restrict__ x,
                        const float* __restrict__ mean, const float* __restrict__ rstd,
                        int64_t rows, int64_t cols, int64_t rows_per_chunk,
                        double* __restrict__ part_a, double* __restrict__ part_b) {
  __shared__ double sa[kColTileY][kColTileX];
  __shared__ double sb[kColTileY][kColTileX];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kColTileX + tx;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  const int64_t r1 = min(rows, r0 + rows_per_chunk);
  double a = 0, b = 0;
  if (col < cols) {
    for (int64_t r = r0 + ty; r < r1; r += kColTileY) {
      const float d = dy[r * cols + col];
      if (kLn) {
        const double xhat = (x[r * cols + col] - static_cast<double>(mean[r])) *
                            static_cast<double>(rstd[r]);
        a += d * xhat;
        b += d;
      } else {
        a += d;
      }
    }
  }
  sa[ty][tx] = a;
  if (kLn) sb[ty][tx] = b;
  __syncthreads();
  if (ty == 0 && col < cols) {
    for (int k = 1; k < kColTileY; ++k) {
      a += sa[k][tx];
      if (kLn) b += sb[k][tx];
    }
    part_a[static_cast<int64_t>(blockIdx.y) * cols + col] = a;
    if (kLn) part_b[static_cast<int64_t>(blockIdx.y) * cols + col] = b;
  }
}

// Stage 2: out_a[col] += float(sum over chunks of part_a[., col]) (and out_b likewise when
// part_b != nullptr), chunks summed in index order. One thread per column, grid-stride.
__global__ void __launch_bounds__(kThreads)
    ColumnFinalizeKernel(const double* __restrict__ part_a, const double* __restrict__ part_b,
                         int64_t chunks, int64_t cols, float* __restrict__ out_a,
                         float* __restrict__ out_b) {
  for (int64_t c = GlobalThread(); c < cols; c += GridThreads()) {
    double a = 0, b = 0;
    for (int64_t k = 0; k < chunks; ++k) {
      a += part_a[k * cols + c];
      if (part_b) b += part_b[k * cols + c];
    }
    out_a[c] += static_cast<float>(a);
    if (part_b) out_b[c] += static_cast<float>(b);
  }
}

// Column sums shared by LayerNormBackwardCuda (x != nullptr: dgamma/dbeta) and
// ColumnSumAccumulateCuda (x == nullptr: out_a += column sums of dy). The chunking depends only
// on (rows, cols), so results are bit-reproducible. Scratch is stream-ordered.
void ColumnReduceAccumulate(const float* dy, const float* x, const float* mean, const float* rstd,
                            int64_t rows, int64_t cols, float* out_a, float* out_b,
                            cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  const int64_t tiles = (cols + kColTileX - 1) / kColTileX;
  CHECK_LE(tiles, static_cast<int64_t>(INT_MAX)) << "column reduction: cols " << cols;
  // About 1024 blocks in flight, at least 8 rows (one per thread row) per chunk, <= 1024 chunks.
  int64_t chunks = std::max<int64_t>(1, 1024 / tiles);
  chunks = std::min<int64_t>(chunks, (rows + kColTileY - 1) / kColTileY);
  chunks = std::max<int64_t>(1, std::min<int64_t>(chunks, 1024));
  const int64_t rows_per_chunk = (rows + chunks - 1) / chunks;
  chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  const bool ln = x != nullptr;
  const size_t part_elems = static_cast<size_t>(chunks) * static_cast<size_t>(cols);
  double* part = nullptr;
  CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&part),
                             part_elems * sizeof(double) * (ln ? 2 : 1), stream));
  double* part_b = ln ? part + part_elems : nullptr;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(chunks));  // y <= 1024
  if (ln) {
    ColumnPartialKernel<true><<<grid, dim3(kColTileX, kColTileY), 0, stream>>>(
        dy, x, mean, rstd, rows, cols, rows_per_chunk, part, part_b);
  } else {
    ColumnPartialKernel<false><<<grid, dim3(kColTileX, kColTileY), 0, stream>>>(
        dy, nullptr, nullptr, nullptr, rows, cols, rows_per_chunk, part, nullptr);
  }
  CUDA_CHECK_LAUNCH();
  ColumnFinalizeKernel<<<BlocksFor(cols), kThreads, 0, stream>>>(part, part_b, chunks, cols,
                                                                 out_a, out_b);
  CUDA_CHECK_LAUNCH();
  CUDA_CHECK(cudaFreeAsync(part, stream));
}

// ---------------------------------------------------------------------------------------------
// Softmax forward, row in registers: each lane holds K groups of V consecutive columns
// (column (lane + 32*k)*V + c), 32*K*V >= cols; V = 4 needs cols % 4 == 0 and 16-byte aligned
// x, y. exp in float by the host's own operations (exp_f32.h), the sum in double (in warp order,
// not the host's index order: within rounding of the host's y).
// Each lane reads and writes only its own columns, so y may alias x.
template <int K, int V>
__global__ void __launch_bounds__(kThreads)
    SoftmaxForwardRegKernel(const float* x, int64_t rows, int cols, float* y) {
  const int lane = threadIdx.x & 31;
  for (int64_t r = FirstWarpRow(); r < rows; r += WarpRowStride()) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    float v[K * V];
    float mx = -INFINITY;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = (lane + 32 * k) * V;
      if (j < cols) {
        if constexpr (V == 4) {
          const float4 q = *reinterpret_cast<const float4*>(xr + j);
          v[k * V] = q.x;
          v[k * V + 1] = q.y;
          v[k * V + 2] = q.z;
          v[k * V + 3] = q.w;
        } else {
          v[k * V] = xr[j];
        }
#pragma unroll
        for (int c = 0; c < V; ++c) mx = fmaxf(mx, v[k * V + c]);
      }
    }
    mx = WarpMax(mx);
    double sum = 0;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = (lane + 32 * k) * V;
      if (j < cols) {
#pragma unroll
        for (int c = 0; c < V; ++c) {
          const float e = exp_f32::Exp(__fsub_rn(v[k * V + c], mx));
          sum += e;
          v[k * V + c] = e;
        }
      }
    }
    const double inv = 1.0 / WarpSum(sum);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = (lane + 32 * k) * V;
      if (j < cols) {
        if constexpr (V == 4) {
          float4 q;
          q.x = static_cast<float>(v[k * V] * inv);
          q.y = static_cast<float>(v[k * V + 1] * inv);
          q.z = static_cast<float>(v[k * V + 2] * inv);
          q.w = static_cast<float>(v[k * V + 3] * inv);
          *reinterpret_cast<float4*>(yr + j) = q;
        } else {
          yr[j] = static_cast<float>(v[k * V] * inv);
        }
      }
    }
  }
}

// Softmax forward for rows longer than 1024: three passes over global memory, exp recomputed in
// pass 3 (the same float bits), y = float(e * (1 / sum)) as on the host. Own columns only: y may
// alias x.
__global__ void __launch_bounds__(kThreads)
    SoftmaxForwardLoopKernel(const float* x, int64_t rows, int64_t cols, float* y) {
  const int lane = threadIdx.x & 31;
  for (int64_t r = FirstWarpRow(); r < rows; r += WarpRowStride()) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    float mx = -INFINITY;
    for (int64_t j = lane; j < cols; j += 32) mx = fmaxf(mx, xr[j]);
    mx = WarpMax(mx);
    double sum = 0;
    for (int64_t j = lane; j < cols; j += 32) sum += exp_f32::Exp(__fsub_rn(xr[j], mx));
    const double inv = 1.0 / WarpSum(sum);
    for (int64_t j = lane; j < cols; j += 32)
      yr[j] = static_cast<float>(static_cast<double>(exp_f32::Exp(__fsub_rn(xr[j], mx))) * inv);
  }
}

template <int K, int V>
void LaunchSoftmaxReg(const float* x, int64_t rows, int cols, float* y, cudaStream_t stream) {
  SoftmaxForwardRegKernel<K, V><<<BlocksForRows(rows), kThreads, 0, stream>>>(x, rows, cols, y);
}

// Softmax backward: one warp per row, dot in double, dx = y * (dy - float(dot)).
template <bool kVec>
__global__ void __launch_bounds__(kThreads)
    SoftmaxBackwardKernel(const float* y, const float* dy, int64_t rows, int64_t cols,
                          float* dx) {
  const int lane = threadIdx.x & 31;
  for (int64_t r = FirstWarpRow(); r < rows; r += WarpRowStride()) {
    const float* yr = y + r * cols;
    const float* dyr = dy + r * cols;
    float* dxr = dx + r * cols;
    double dot = 0;
    if (kVec) {
      const float4* y4 = reinterpret_cast<const float4*>(yr);
      const float4* d4 = reinterpret_cast<const float4*>(dyr);
      for (int64_t j = lane; j < cols / 4; j += 32) {
        const float4 a = y4[j], b = d4[j];
        dot += static_cast<double>(a.x) * b.x + static_cast<double>(a.y) * b.y +
               static_cast<double>(a.z) * b.z + static_cast<double>(a.w) * b.w;
      }
    } else {
      for (int64_t j = lane; j < cols; j += 32) dot += static_cast<double>(yr[j]) * dyr[j];
    }
    const float d = static_cast<float>(WarpSum(dot));
    if (kVec) {
      const float4* y4 = reinterpret_cast<const float4*>(yr);
      const float4* d4 = reinterpret_cast<const float4*>(dyr);
      float4* o4 = reinterpret_cast<float4*>(dxr);
      for (int64_t j = lane; j < cols / 4; j += 32) {
        const float4 a = y4[j], b = d4[j];
        o4[j] = make_float4(__fmul_rn(a.x, b.x - d), __fmul_rn(a.y, b.y - d),
                            __fmul_rn(a.z, b.z - d), __fmul_rn(a.w, b.w - d));
      }
    } else {
      for (int64_t j = lane; j < cols; j += 32) dxr[j] = __fmul_rn(yr[j], dyr[j] - d);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Elementwise.

template <bool kVec>
__global__ void __launch_bounds__(kThreads)
    BiasAddRowsKernel(float* __restrict__ y, const float* __restrict__ b, int64_t rows,
                      int64_t cols) {
  if (kVec) {
    const int64_t c4 = cols / 4, n4 = rows * c4;
    float4* y4 = reinterpret_cast<float4*>(y);
    const float4* b4 = reinterpret_cast<const float4*>(b);
    for (int64_t i = GlobalThread(); i < n4; i += GridThreads()) {
      float4 v = y4[i];
      const float4 w = b4[i % c4];
      v.x += w.x;
      v.y += w.y;
      v.z += w.z;
      v.w += w.w;
      y4[i] = v;
    }
  } else {
    const int64_t n = rows * cols;
    for (int64_t i = GlobalThread(); i < n; i += GridThreads()) y[i] += b[i % cols];
  }
}

// y[i] += x[i]; n4 float4 groups, then the n - 4*n4 tail elements by the first threads.
// x may equal y (no __restrict__).
__global__ void __launch_bounds__(kThreads)
    AddInPlaceVec4Kernel(float4* y, const float4* x, int64_t n4, float* yt, const float* xt,
                         int tail) {
  const int64_t tid = GlobalThread();
  for (int64_t i = tid; i < n4; i += GridThreads()) {
    float4 v = y[i];
    const float4 w = x[i];
    v.x += w.x;
    v.y += w.y;
    v.z += w.z;
    v.w += w.w;
    y[i] = v;
  }
  if (tid < tail) yt[tid] += xt[tid];
}

__global__ void __launch_bounds__(kThreads)
    AddInPlaceScalarKernel(float* y, const float* x, int64_t n) {
  for (int64_t i = GlobalThread(); i < n; i += GridThreads()) y[i] += x[i];
}

// ---------------------------------------------------------------------------------------------
// Softmax cross-entropy: one warp per row, any C, the CPU's operations in the CPU's precision.
__global__ void __launch_bounds__(kThreads)
    SoftmaxCrossEntropyKernel(const float* logits, const int* __restrict__ labels, int64_t B,
                              int64_t C, float loss_scale, float eps, float off, float on,
                              float* __restrict__ row_loss, int* __restrict__ pred,
                              float* dlogits) {
  const int lane = threadIdx.x & 31;
  for (int64_t r = FirstWarpRow(); r < B; r += WarpRowStride()) {
    const float* l = logits + r * C;
    float* d = dlogits + r * C;
    const int label = labels[r];
    if (label < 0 || label >= C) __trap();
    // Argmax, lowest index on ties: each lane scans its columns in order with a strict '>',
    // then the lanes' winners meet in a butterfly that prefers the larger value, then the lower
    // index (a symmetric choice, so every lane ends with the same winner).
    float best = -INFINITY;
    int64_t arg = INT64_MAX;
    if (lane < C) {
      best = l[lane];
      arg = lane;
    }
    for (int64_t j = lane + 32; j < C; j += 32) {
      const float v = l[j];
      if (v > best) {
        best = v;
        arg = j;
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      const float ob = __shfl_xor_sync(kFullMask, best, o);
      const int64_t oa = __shfl_xor_sync(kFullMask, arg, o);
      if (ob > best || (ob == best && oa < arg)) {
        best = ob;
        arg = oa;
      }
    }
    const double mx = best;
    const float l_label = l[label];  // read before any lane overwrites the row (dlogits == logits)
    double sum = 0, logit_sum = 0;
    for (int64_t j = lane; j < C; j += 32) {
      sum += exp(static_cast<double>(l[j]) - mx);
      logit_sum += l[j];
    }
    const double lse = mx + log(WarpSum(sum));
    logit_sum = WarpSum(logit_sum);
    __syncwarp();
    for (int64_t j = lane; j < C; j += 32) {
      const float p = static_cast<float>(exp(static_cast<double>(l[j]) - lse));
      float g = __fsub_rn(__fmul_rn(loss_scale, p), off);
      if (j == label) g = __fsub_rn(g, on);
      d[j] = g;
    }
    if (lane == 0) {
      const double ce = lse - l_label;
      const double loss = eps > 0 ? (1.0 - eps) * ce + eps * (lse - logit_sum / C) : ce;
      if (row_loss) row_loss[r] = static_cast<float>(loss);
      if (pred) pred[r] = static_cast<int>(arg);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Mean pooling. Forward: one thread per output (b, j), tokens summed in order in double; threads
// of a warp read adjacent columns (coalesced).
__global__ void __launch_bounds__(kThreads)
    MeanPoolForwardKernel(const float* __restrict__ x, int64_t batch, int64_t tokens,
                          int64_t dim, float* __restrict__ y) {
  const int64_t n = batch * dim;
  for (int64_t i = GlobalThread(); i < n; i += GridThreads()) {
    const int64_t b = i / dim, j = i - b * dim;
    const float* xb = x + b * tokens * dim + j;
    double acc = 0;
    for (int64_t t = 0; t < tokens; ++t) acc += xb[t * dim];
    y[i] = static_cast<float>(acc / tokens);
  }
}

// Backward: dx[row, j] = dy[row / T, j] * inv. kVec: dim % 4 == 0, dy and dx aligned.
template <bool kVec>
__global__ void __launch_bounds__(kThreads)
    MeanPoolBackwardKernel(const float* __restrict__ dy, int64_t batch, int64_t tokens,
                           int64_t dim, float inv, float* __restrict__ dx) {
  if (kVec) {
    const int64_t d4 = dim / 4, n4 = batch * tokens * d4;
    const float4* dy4 = reinterpret_cast<const float4*>(dy);
    float4* dx4 = reinterpret_cast<float4*>(dx);
    for (int64_t i = GlobalThread(); i < n4; i += GridThreads()) {
      const int64_t row = i / d4, j = i - row * d4;
      const float4 g = dy4[(row / tokens) * d4 + j];
      dx4[i] = make_float4(g.x * inv, g.y * inv, g.z * inv, g.w * inv);
    }
  } else {
    const int64_t n = batch * tokens * dim;
    for (int64_t i = GlobalThread(); i < n; i += GridThreads()) {
      const int64_t row = i / dim, j = i - row * dim;
      dx[i] = dy[(row / tokens) * dim + j] * inv;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Patches. One thread per element of the output (coalesced writes); reads are runs of p.
struct PatchGeometry {
  int64_t C, S, p, G, T, Pd;  // channels, image size, patch, grid S/p, tokens G*G, C*p*p
};

// Offset of patch element (bt, e) in the image array.
__device__ __forceinline__ int64_t ImageOffset(const PatchGeometry& g, int64_t bt, int64_t e) {
  const int64_t b = bt / g.T, t = bt - b * g.T;
  const int64_t py = t / g.G, px = t - py * g.G;
  const int64_t pp = g.p * g.p;
  const int64_t c = e / pp, rem = e - c * pp;
  const int64_t i = rem / g.p, j = rem - i * g.p;
  return ((b * g.C + c) * g.S + py * g.p + i) * g.S + px * g.p + j;
}

__global__ void __launch_bounds__(kThreads)
    PatchifyKernel(const float* __restrict__ images, int64_t n, PatchGeometry g,
                   float* __restrict__ patches) {
  for (int64_t o = GlobalThread(); o < n; o += GridThreads()) {
    const int64_t bt = o / g.Pd, e = o - bt * g.Pd;
    patches[o] = images[ImageOffset(g, bt, e)];
  }
}

__global__ void __launch_bounds__(kThreads)
    UnpatchifyKernel(const float* __restrict__ patches, int64_t n, PatchGeometry g,
                     float* __restrict__ images) {
  const int64_t SS = g.S * g.S;
  for (int64_t o = GlobalThread(); o < n; o += GridThreads()) {
    const int64_t bc = o / SS, rem = o - bc * SS;
    const int64_t b = bc / g.C, c = bc - b * g.C;
    const int64_t yy = rem / g.S, xx = rem - yy * g.S;
    const int64_t py = yy / g.p, i = yy - py * g.p;
    const int64_t px = xx / g.p, j = xx - px * g.p;
    const int64_t bt = b * g.T + py * g.G + px;
    images[o] = patches[bt * g.Pd + (c * g.p + i) * g.p + j];
  }
}

PatchGeometry CheckedGeometry(int64_t batch, int64_t channels, int64_t image_size,
                              int64_t patch) {
  CHECK_GE(batch, 0);
  CHECK(channels > 0 && image_size > 0 && patch > 0 && image_size % patch == 0)
      << "patchify: image_size " << image_size << " must be a positive multiple of patch "
      << patch << " (channels " << channels << ")";
  PatchGeometry g;
  g.C = channels;
  g.S = image_size;
  g.p = patch;
  g.G = image_size / patch;
  g.T = g.G * g.G;
  g.Pd = channels * patch * patch;
  return g;
}

}  // namespace

// ---- host launchers ----

void LayerNormForwardCuda(const float* x, const float* gamma, const float* beta, int64_t rows,
                          int64_t dim, float eps, float* y, float* mean, float* rstd,
                          cudaStream_t stream) {
  CHECK_GT(dim, 0) << "LayerNormForwardCuda: dim";
  if (rows <= 0) return;
  const bool vec = dim % 4 == 0 && Aligned16(x) && Aligned16(y) && Aligned16(gamma) &&
                   Aligned16(beta);
  if (vec) {
    LayerNormForwardKernel<true><<<BlocksForRows(rows), kThreads, 0, stream>>>(
        x, gamma, beta, rows, dim, eps, y, mean, rstd);
  } else {
    LayerNormForwardKernel<false><<<BlocksForRows(rows), kThreads, 0, stream>>>(
        x, gamma, beta, rows, dim, eps, y, mean, rstd);
  }
  CUDA_CHECK_LAUNCH();
}

void LayerNormBackwardCuda(const float* x, const float* dy, const float* gamma, const float* mean,
                           const float* rstd, int64_t rows, int64_t dim, float* dx, float* dgamma,
                           float* dbeta, cudaStream_t stream) {
  CHECK_GT(dim, 0) << "LayerNormBackwardCuda: dim";
  if (rows <= 0) return;
  // Parameter gradients first: they read dy, which dx may overwrite.
  ColumnReduceAccumulate(dy, x, mean, rstd, rows, dim, dgamma, dbeta, stream);
  const bool vec = dim % 4 == 0 && Aligned16(x) && Aligned16(dy) && Aligned16(gamma) &&
                   Aligned16(dx);
  if (vec) {
    LayerNormBackwardDxKernel<true><<<BlocksForRows(rows), kThreads, 0, stream>>>(
        x, dy, gamma, mean, rstd, rows, dim, dx);
  } else {
    LayerNormBackwardDxKernel<false><<<BlocksForRows(rows), kThreads, 0, stream>>>(
        x, dy, gamma, mean, rstd, rows, dim, dx);
  }
  CUDA_CHECK_LAUNCH();
}

void SoftmaxForwardRowsCuda(const float* x, int64_t rows, int64_t cols, float* y,
                            cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  if (cols > 1024) {
    SoftmaxForwardLoopKernel<<<BlocksForRows(rows), kThreads, 0, stream>>>(x, rows, cols, y);
    CUDA_CHECK_LAUNCH();
    return;
  }
  const int c = static_cast<int>(cols);
  if (c % 4 == 0 && Aligned16(x) && Aligned16(y)) {
    const int groups = (c / 4 + 31) / 32;  // float4 groups per lane, 1..8
    if (groups <= 1) LaunchSoftmaxReg<1, 4>(x, rows, c, y, stream);
    else if (groups <= 2) LaunchSoftmaxReg<2, 4>(x, rows, c, y, stream);
    else if (groups <= 4) LaunchSoftmaxReg<4, 4>(x, rows, c, y, stream);
    else LaunchSoftmaxReg<8, 4>(x, rows, c, y, stream);
  } else {
    const int per_lane = (c + 31) / 32;  // 1..32
    if (per_lane <= 1) LaunchSoftmaxReg<1, 1>(x, rows, c, y, stream);
    else if (per_lane <= 2) LaunchSoftmaxReg<2, 1>(x, rows, c, y, stream);
    else if (per_lane <= 4) LaunchSoftmaxReg<4, 1>(x, rows, c, y, stream);
    else if (per_lane <= 8) LaunchSoftmaxReg<8, 1>(x, rows, c, y, stream);
    else if (per_lane <= 16) LaunchSoftmaxReg<16, 1>(x, rows, c, y, stream);
    else LaunchSoftmaxReg<32, 1>(x, rows, c, y, stream);
  }
  CUDA_CHECK_LAUNCH();
}

void SoftmaxBackwardRowsCuda(const float* y, const float* dy, int64_t rows, int64_t cols,
                             float* dx, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  if (cols % 4 == 0 && Aligned16(y) && Aligned16(dy) && Aligned16(dx)) {
    SoftmaxBackwardKernel<true><<<BlocksForRows(rows), kThreads, 0, stream>>>(y, dy, rows, cols,
                                                                             dx);
  } else {
    SoftmaxBackwardKernel<false><<<BlocksForRows(rows), kThreads, 0, stream>>>(y, dy, rows, cols,
                                                                              dx);
  }
  CUDA_CHECK_LAUNCH();
}

void BiasAddRowsCuda(float* y, const float* b, int64_t rows, int64_t cols, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  if (cols % 4 == 0 && Aligned16(y) && Aligned16(b)) {
    BiasAddRowsKernel<true><<<BlocksFor(rows * cols / 4), kThreads, 0, stream>>>(y, b, rows, cols);
  } else {
    BiasAddRowsKernel<false><<<BlocksFor(rows * cols), kThreads, 0, stream>>>(y, b, rows, cols);
  }
  CUDA_CHECK_LAUNCH();
}

void ColumnSumAccumulateCuda(const float* dy, int64_t rows, int64_t cols, float* db,
                             cudaStream_t stream) {
  ColumnReduceAccumulate(dy, nullptr, nullptr, nullptr, rows, cols, db, nullptr, stream);
}

void AddInPlaceCuda(float* y, const float* x, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  if (Aligned16(x) && Aligned16(y)) {
    const int64_t n4 = n / 4;
    const int tail = static_cast<int>(n - 4 * n4);
    AddInPlaceVec4Kernel<<<BlocksFor(n4), kThreads, 0, stream>>>(
        reinterpret_cast<float4*>(y), reinterpret_cast<const float4*>(x), n4, y + 4 * n4,
        x + 4 * n4, tail);
  } else {
    AddInPlaceScalarKernel<<<BlocksFor(n), kThreads, 0, stream>>>(y, x, n);
  }
  CUDA_CHECK_LAUNCH();
}

void SoftmaxCrossEntropyForwardCuda(const float* logits, const int* labels, int64_t B, int64_t C,
                                    float loss_scale, float label_smoothing, float* row_loss,
                                    int* pred, float* dlogits, cudaStream_t stream) {
  CHECK_GT(C, 0) << "SoftmaxCrossEntropyForwardCuda: no classes";
  CHECK(label_smoothing >= 0.f && label_smoothing < 1.f)
      << "SoftmaxCrossEntropyForwardCuda: label_smoothing " << label_smoothing;
  if (B <= 0) return;
  // The host backend's float expressions (core/cpu_backend_layers.cc), evaluated once here.
  const float off = loss_scale * (label_smoothing / static_cast<float>(C));
  const float on = loss_scale * (1.f - label_smoothing);
  SoftmaxCrossEntropyKernel<<<BlocksForRows(B), kThreads, 0, stream>>>(
      logits, labels, B, C, loss_scale, label_smoothing, off, on, row_loss, pred, dlogits);
  CUDA_CHECK_LAUNCH();
}

void MeanPoolTokensForwardCuda(const float* x, int64_t batch, int64_t tokens, int64_t dim,
                               float* y, cudaStream_t stream) {
  CHECK_GT(tokens, 0) << "MeanPoolTokensForwardCuda: tokens";
  if (batch <= 0 || dim <= 0) return;
  MeanPoolForwardKernel<<<BlocksFor(batch * dim), kThreads, 0, stream>>>(x, batch, tokens, dim,
                                                                         y);
  CUDA_CHECK_LAUNCH();
}

void MeanPoolTokensBackwardCuda(const float* dy, int64_t batch, int64_t tokens, int64_t dim,
                                float* dx, cudaStream_t stream) {
  CHECK_GT(tokens, 0) << "MeanPoolTokensBackwardCuda: tokens";
  if (batch <= 0 || dim <= 0) return;
  const float inv = 1.f / static_cast<float>(tokens);  // as MeanPoolTokens::Backward
  if (dim % 4 == 0 && Aligned16(dy) && Aligned16(dx)) {
    MeanPoolBackwardKernel<true><<<BlocksFor(batch * tokens * dim / 4), kThreads, 0, stream>>>(
        dy, batch, tokens, dim, inv, dx);
  } else {
    MeanPoolBackwardKernel<false><<<BlocksFor(batch * tokens * dim), kThreads, 0, stream>>>(
        dy, batch, tokens, dim, inv, dx);
  }
  CUDA_CHECK_LAUNCH();
}

void PatchifyCuda(const float* images, int64_t batch, int64_t channels, int64_t image_size,
                  int64_t patch, float* patches, cudaStream_t stream) {
  const PatchGeometry g = CheckedGeometry(batch, channels, image_size, patch);
  const int64_t n = batch * g.T * g.Pd;
  if (n == 0) return;
  PatchifyKernel<<<BlocksFor(n), kThreads, 0, stream>>>(images, n, g, patches);
  CUDA_CHECK_LAUNCH();
}

void UnpatchifyCuda(const float* patches, int64_t batch, int64_t channels, int64_t image_size,
                    int64_t patch, float* images, cudaStream_t stream) {
  const PatchGeometry g = CheckedGeometry(batch, channels, image_size, patch);
  const int64_t n = batch * channels * image_size * image_size;
  if (n == 0) return;
  UnpatchifyKernel<<<BlocksFor(n), kThreads, 0, stream>>>(patches, n, g, images);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moe
