// MoE dispatch/combine kernels (see moe_dispatch_kernels.h for the contracts).
//
// Launch configurations and limits:
//  BuildDispatchMaps  cudaMemsetAsync(row_choice, -1), then one thread per choice (256 threads,
//      grid-stride). Kept choices own distinct rows (slots are unique per (expert, group)), so
//      the scatter into row_choice has no conflicts.
//  Pack, CombineBackward (d_returned)  one warp per SEND ROW: a gather, so every send row is
//      written exactly once (padding rows with zeros) and no memset is needed.
//  Combine, DispatchBackward  one warp per TOKEN, summing its k choices in order r = 0..k-1 per
//      element: no atomics, the CPU's order and rounding (__fadd_rn/__fmul_rn forbid FMA).
//  GateGrad (in CombineBackward)  one warp per CHOICE: lane-strided double partial sums, then a
//      butterfly reduction (the only result whose rounding differs from the CPU: double order).
//  All warp kernels: 256 threads (8 warps) per block, grid-stride, <= 2^20 blocks; lanes stride
//      along the row in float4 when D % 4 == 0 and the base pointers are 16-byte aligned.
//  PermuteBlocks  each block of the grid (<= 2 per SM) first scans block_rows into two offset
//      tables in dynamic shared memory (src-major and expert-major, 16 bytes per row block, so
//      ep*el*G <= 12288 = 192 KiB, opted in above 48 KiB), then copies one output row per warp,
//      grid-stride, finding the row's block by binary search in the output-order table.
//  Launch bounds: every kernel's __launch_bounds__ is its launch's block size (checked at build
//  time, tests/build_checks). With the thread count alone ptxas may trim registers to fit one
//  more block per SM; for the float4 CombineBackwardRows and PermuteBlocks that spilled 4-8
//  bytes, so those two say minBlocks 1 (use registers freely up to what one block allows).
#include "core/kernels/cuda/moe_dispatch_kernels.h"

#include <cuda_runtime.h>
#include <glog/logging.h>

#include <algorithm>
#include <climits>
#include <cub/cub.cuh>

#include "core/kernels/cuda/cuda_check.h"

namespace moe {

namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kEltThreads = 256;
constexpr int kWarpThreads = 256;
constexpr int kWarpsPerBlock = kWarpThreads / 32;
constexpr int kPermThreads = 256;
constexpr int64_t kMaxPermBlocks = 12288;

int GridFor(int64_t work, int items_per_block) {
  const int64_t b = (std::max<int64_t>(work, 1) + items_per_block - 1) / items_per_block;
  return static_cast<int>(std::min<int64_t>(b, int64_t{1} << 20));
}

bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

__device__ __forceinline__ int64_t GlobalThread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t ThreadStride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}
__device__ __forceinline__ int64_t GlobalWarp() {
  return static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
}
__device__ __forceinline__ int64_t WarpStride() {
  return static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
}

// Element-wise arithmetic on float or float4, rounded exactly as the CPU's scalar float code.
template <typename T>
__device__ __forceinline__ T Zero();
template <>
__device__ __forceinline__ float Zero<float>() {
  return 0.f;
}
template <>
__device__ __forceinline__ float4 Zero<float4>() {
  return make_float4(0.f, 0.f, 0.f, 0.f);
}
__device__ __forceinline__ float Add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float4 Add(float4 a, float4 b) {
  return make_float4(__fadd_rn(a.x, b.x), __fadd_rn(a.y, b.y), __fadd_rn(a.z, b.z),
                     __fadd_rn(a.w, b.w));
}
__device__ __forceinline__ float Scale(float w, float a) { return __fmul_rn(w, a); }
__device__ __forceinline__ float4 Scale(float w, float4 a) {
  return make_float4(__fmul_rn(w, a.x), __fmul_rn(w, a.y), __fmul_rn(w, a.z), __fmul_rn(w, a.w));
}
__device__ __forceinline__ double Dot(float a, float b) {
  return static_cast<double>(a) * static_cast<double>(b);
}
__device__ __forceinline__ double Dot(float4 a, float4 b) {
  return ((Dot(a.x, b.x) + Dot(a.y, b.y)) + Dot(a.z, b.z)) + Dot(a.w, b.w);
}

__global__ void __launch_bounds__(kEltThreads)
    DispatchMapsKernel(const int* expert, const int* slot, const int64_t* block_offset,
                       int64_t choices, int k, int64_t n, int64_t groups, int E, int64_t send_rows,
                       int* choice_row, int* row_choice) {
  for (int64_t c = GlobalThread(); c < choices; c += ThreadStride()) {
    const int s = slot[c];
    if (s < 0) {
      choice_row[c] = -1;
      continue;
    }
    const int e = expert[c];
    if (e < 0 || e >= E) __trap();
    const int64_t g = (c / k) / n;
    const int64_t row = block_offset[e * groups + g] + s;
    if (row < 0 || row >= send_rows) __trap();  // slot past its block: layout and slots disagree
    choice_row[c] = static_cast<int>(row);
    row_choice[row] = static_cast<int>(c);
  }
}

// W = row width in elements of T (D or D/4).
template <typename T>
__global__ void __launch_bounds__(kWarpThreads)
    PackKernel(const T* x, const int* row_choice, int64_t send_rows, int k, int64_t W, T* send) {
  const int lane = threadIdx.x & 31;
  for (int64_t row = GlobalWarp(); row < send_rows; row += WarpStride()) {
    const int c = row_choice[row];
    T* out = send + row * W;
    if (c < 0) {
      for (int64_t j = lane; j < W; j += 32) out[j] = Zero<T>();
    } else {
      const T* in = x + static_cast<int64_t>(c / k) * W;
      for (int64_t j = lane; j < W; j += 32) out[j] = in[j];
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kWarpThreads)
    CombineKernel(const T* returned, const int* choice_row, const float* gate, int64_t rows, int k,
                  int64_t W, T* y) {
  const int lane = threadIdx.x & 31;
  for (int64_t t = GlobalWarp(); t < rows; t += WarpStride()) {
    for (int64_t j = lane; j < W; j += 32) {
      T acc = Zero<T>();
      for (int r = 0; r < k; ++r) {
        const int row = choice_row[t * k + r];
        if (row < 0) continue;
        acc = Add(acc, Scale(gate[t * k + r], returned[static_cast<int64_t>(row) * W + j]));
      }
      y[t * W + j] = acc;
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kWarpThreads, 1)  // see "Launch bounds" above
    CombineBackwardRowsKernel(const T* dy, const float* gate, const int* row_choice,
                              int64_t send_rows, int k, int64_t W, T* d_returned) {
  const int lane = threadIdx.x & 31;
  for (int64_t row = GlobalWarp(); row < send_rows; row += WarpStride()) {
    const int c = row_choice[row];
    T* out = d_returned + row * W;
    if (c < 0) {
      for (int64_t j = lane; j < W; j += 32) out[j] = Zero<T>();
    } else {
      const float w = gate[c];
      const T* in = dy + static_cast<int64_t>(c / k) * W;
      for (int64_t j = lane; j < W; j += 32) out[j] = Scale(w, in[j]);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kWarpThreads)
    GateGradKernel(const T* dy, const T* returned, const int* expert, const int* choice_row,
                   int64_t choices, int k, int E, int64_t W, float* dgate, float* d_probs) {
  const int lane = threadIdx.x & 31;
  for (int64_t c = GlobalWarp(); c < choices; c += WarpStride()) {
    const int row = choice_row[c];  // warp-uniform
    if (row < 0) {
      if (lane == 0 && dgate != nullptr) dgate[c] = 0.f;
      continue;
    }
    const int64_t t = c / k;
    const T* a = dy + t * W;
    const T* b = returned + static_cast<int64_t>(row) * W;
    double s = 0;
    for (int64_t j = lane; j < W; j += 32) s += Dot(a[j], b[j]);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(kFull, s, off);
    if (lane == 0) {
      const float f = static_cast<float>(s);
      if (dgate != nullptr) dgate[c] = f;
      if (d_probs != nullptr) d_probs[t * E + expert[c]] += f;
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kWarpThreads)
    DispatchBackwardKernel(const T* d_send, const int* choice_row, int64_t rows, int k, int64_t W,
                           T* dx, bool accumulate) {
  const int lane = threadIdx.x & 31;
  for (int64_t t = GlobalWarp(); t < rows; t += WarpStride()) {
    for (int64_t j = lane; j < W; j += 32) {
      T acc = accumulate ? dx[t * W + j] : Zero<T>();
      for (int r = 0; r < k; ++r) {
        const int row = choice_row[t * k + r];
        if (row < 0) continue;
        acc = Add(acc, d_send[static_cast<int64_t>(row) * W + j]);
      }
      dx[t * W + j] = acc;
    }
  }
}

// Block index conversions: src-major b = (s*el + l)*G + g  <->  expert-major q = (l*ep + s)*G + g.
__device__ __forceinline__ int64_t ExpertToSrc(int64_t q, int ep, int el, int64_t G) {
  const int64_t g = q % G, ls = q / G;
  const int64_t s = ls % ep, l = ls / ep;
  return (s * el + l) * G + g;
}
__device__ __forceinline__ int64_t SrcToExpert(int64_t b, int ep, int el, int64_t G) {
  const int64_t g = b % G, sl = b / G;
  const int64_t l = sl % el, s = sl / el;
  return (l * ep + s) * G + g;
}

template <typename T>
__global__ void __launch_bounds__(kPermThreads, 1)  // see "Launch bounds" above
    PermuteBlocksKernel(const T* in, T* out, int64_t W, const int64_t* block_rows, int ep, int el,
                        int64_t G, bool to_expert_major) {
  extern __shared__ int64_t perm_smem[];
  const int64_t nb = static_cast<int64_t>(ep) * el * G;
  int64_t* src_off = perm_smem;        // [nb], indexed src-major
  int64_t* exp_off = perm_smem + nb;   // [nb], indexed expert-major
  using Scan = cub::BlockScan<int64_t, kPermThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int64_t carry;
  for (int pass = 0; pass < 2; ++pass) {
    if (threadIdx.x == 0) carry = 0;
    __syncthreads();
    int64_t* table = pass == 0 ? src_off : exp_off;
    for (int64_t base = 0; base < nb; base += kPermThreads) {
      const int64_t i = base + threadIdx.x;
      int64_t v = 0;
      if (i < nb) v = block_rows[pass == 0 ? i : ExpertToSrc(i, ep, el, G)];
      int64_t excl, agg;
      Scan(scan_storage).ExclusiveSum(v, excl, agg);
      if (i < nb) table[i] = carry + excl;
      __syncthreads();
      if (threadIdx.x == 0) carry += agg;
      __syncthreads();
    }
  }
  const int64_t total = carry;
  const int64_t* out_off = to_expert_major ? exp_off : src_off;
  const int lane = threadIdx.x & 31;
  for (int64_t o = GlobalWarp(); o < total; o += WarpStride()) {
    // The last block (in output order) starting at or before o holds o; empty blocks share
    // their successor's offset and lose to it.
    int64_t lo = 0, hi = nb - 1;
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) >> 1;
      if (out_off[mid] <= o) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    const int64_t in_row = to_expert_major
                               ? src_off[ExpertToSrc(lo, ep, el, G)] + (o - exp_off[lo])
                               : exp_off[SrcToExpert(lo, ep, el, G)] + (o - src_off[lo]);
    const T* src = in + in_row * W;
    T* dst = out + o * W;
    for (int64_t j = lane; j < W; j += 32) dst[j] = src[j];
  }
}

// Above 48 KiB of dynamic shared memory a kernel must opt in (cudaFuncSetAttribute), and the
// static shared memory (cub's scan storage) counts against the same per-block limit.
template <typename T>
void LaunchPermuteBlocks(const T* in, T* out, int64_t W, const int64_t* block_rows, int ep, int el,
                         int64_t groups, bool to_expert_major, int grid, size_t smem, int optin,
                         cudaStream_t stream) {
  if (smem > 48 * 1024) {
    cudaFuncAttributes attr;
    CUDA_CHECK(cudaFuncGetAttributes(&attr, PermuteBlocksKernel<T>));
    CHECK_LE(smem + attr.sharedSizeBytes, static_cast<size_t>(optin))
        << "PermuteBlocksCuda: offset tables need " << smem << " bytes of shared memory";
    CUDA_CHECK(cudaFuncSetAttribute(PermuteBlocksKernel<T>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(smem)));
  }
  PermuteBlocksKernel<T><<<grid, kPermThreads, smem, stream>>>(in, out, W, block_rows, ep, el,
                                                               groups, to_expert_major);
  CUDA_CHECK_LAUNCH();
}

void CheckRowsFitInt(int64_t rows, int k, int64_t send_rows) {
  CHECK_GE(rows, 0);
  CHECK_GE(k, 1);
  CHECK_GE(send_rows, 0);
  CHECK_LT(rows * k, int64_t{INT_MAX}) << "dispatch maps are int32: rows*k too large";
  CHECK_LT(send_rows, int64_t{INT_MAX}) << "dispatch maps are int32: send_rows too large";
}

}  // namespace

void BuildDispatchMapsCuda(const int* expert, const int* slot, const int64_t* block_offset,
                           int64_t rows, int k, int64_t group_tokens, int E, int64_t send_rows,
                           int* choice_row, int* row_choice, cudaStream_t stream) {
  CheckRowsFitInt(rows, k, send_rows);
  CHECK_GT(group_tokens, 0);
  CHECK_EQ(rows % group_tokens, 0) << "rows must be whole routing groups";
  CHECK_GE(E, 1);
  if (send_rows > 0)
    CUDA_CHECK(cudaMemsetAsync(row_choice, 0xff, send_rows * sizeof(int), stream));  // -1
  const int64_t choices = rows * k;
  if (choices == 0) return;
  DispatchMapsKernel<<<GridFor(choices, kEltThreads), kEltThreads, 0, stream>>>(
      expert, slot, block_offset, choices, k, group_tokens, rows / group_tokens, E, send_rows,
      choice_row, row_choice);
  CUDA_CHECK_LAUNCH();
}

void DispatchPackCuda(const float* x, const int* row_choice, int64_t send_rows, int k, int64_t D,
                      float* send, cudaStream_t stream) {
  CheckRowsFitInt(0, k, send_rows);
  CHECK_GE(D, 0);
  if (send_rows == 0 || D == 0) return;
  const int grid = GridFor(send_rows, kWarpsPerBlock);
  if (D % 4 == 0 && Aligned16(x) && Aligned16(send)) {
    PackKernel<float4><<<grid, kWarpThreads, 0, stream>>>(
        reinterpret_cast<const float4*>(x), row_choice, send_rows, k, D / 4,
        reinterpret_cast<float4*>(send));
  } else {
    PackKernel<float><<<grid, kWarpThreads, 0, stream>>>(x, row_choice, send_rows, k, D, send);
  }
  CUDA_CHECK_LAUNCH();
}

void CombineCuda(const float* returned, const int* choice_row, const float* gate, int64_t rows,
                 int k, int64_t D, float* y, cudaStream_t stream) {
  CheckRowsFitInt(rows, k, 0);
  CHECK_GE(D, 0);
  if (rows == 0 || D == 0) return;
  const int grid = GridFor(rows, kWarpsPerBlock);
  if (D % 4 == 0 && Aligned16(returned) && Aligned16(y)) {
    CombineKernel<float4><<<grid, kWarpThreads, 0, stream>>>(
        reinterpret_cast<const float4*>(returned), choice_row, gate, rows, k, D / 4,
        reinterpret_cast<float4*>(y));
  } else {
    CombineKernel<float><<<grid, kWarpThreads, 0, stream>>>(returned, choice_row, gate, rows, k,
                                                            D, y);
  }
  CUDA_CHECK_LAUNCH();
}

void CombineBackwardCuda(const float* dy, const float* returned, const float* gate,
                         const int* expert, const int* choice_row, const int* row_choice,
                         int64_t rows, int k, int E, int64_t send_rows, int64_t D,
                         float* d_returned, float* dgate, float* d_probs, cudaStream_t stream) {
  CheckRowsFitInt(rows, k, send_rows);
  CHECK_GE(D, 0);
  CHECK_GE(E, 1);
  const bool vec = D % 4 == 0 && Aligned16(dy) && Aligned16(returned) && Aligned16(d_returned);
  if (send_rows > 0 && D > 0) {
    const int grid = GridFor(send_rows, kWarpsPerBlock);
    if (vec) {
      CombineBackwardRowsKernel<float4><<<grid, kWarpThreads, 0, stream>>>(
          reinterpret_cast<const float4*>(dy), gate, row_choice, send_rows, k, D / 4,
          reinterpret_cast<float4*>(d_returned));
    } else {
      CombineBackwardRowsKernel<float><<<grid, kWarpThreads, 0, stream>>>(
          dy, gate, row_choice, send_rows, k, D, d_returned);
    }
    CUDA_CHECK_LAUNCH();
  }
  if ((dgate == nullptr && d_probs == nullptr) || rows == 0) return;
  const int64_t choices = rows * k;
  const int grid = GridFor(choices, kWarpsPerBlock);
  if (vec) {
    GateGradKernel<float4><<<grid, kWarpThreads, 0, stream>>>(
        reinterpret_cast<const float4*>(dy), reinterpret_cast<const float4*>(returned), expert,
        choice_row, choices, k, E, D / 4, dgate, d_probs);
  } else {
    GateGradKernel<float><<<grid, kWarpThreads, 0, stream>>>(dy, returned, expert, choice_row,
                                                             choices, k, E, D, dgate, d_probs);
  }
  CUDA_CHECK_LAUNCH();
}

void DispatchBackwardCuda(const float* d_send, const int* choice_row, int64_t rows, int k,
                          int64_t D, float* dx, bool accumulate, cudaStream_t stream) {
  CheckRowsFitInt(rows, k, 0);
  CHECK_GE(D, 0);
  if (rows == 0 || D == 0) return;
  const int grid = GridFor(rows, kWarpsPerBlock);
  if (D % 4 == 0 && Aligned16(d_send) && Aligned16(dx)) {
    DispatchBackwardKernel<float4><<<grid, kWarpThreads, 0, stream>>>(
        reinterpret_cast<const float4*>(d_send), choice_row, rows, k, D / 4,
        reinterpret_cast<float4*>(dx), accumulate);
  } else {
    DispatchBackwardKernel<float><<<grid, kWarpThreads, 0, stream>>>(d_send, choice_row, rows, k,
                                                                     D, dx, accumulate);
  }
  CUDA_CHECK_LAUNCH();
}

void PermuteBlocksCuda(const float* in, float* out, int64_t D, const int64_t* block_rows, int ep,
                       int el, int64_t groups, int64_t total_rows, bool to_expert_major,
                       cudaStream_t stream) {
  CHECK_GE(ep, 1);
  CHECK_GE(el, 1);
  CHECK_GE(groups, 1);
  CHECK_GE(D, 0);
  CHECK_GE(total_rows, 0);
  const int64_t nb = static_cast<int64_t>(ep) * el * groups;
  CHECK_LE(nb, kMaxPermBlocks) << "PermuteBlocksCuda: " << nb
                               << " row blocks exceed the shared-memory offset tables";
  if (total_rows == 0 || D == 0) return;
  const size_t smem = static_cast<size_t>(2 * nb) * sizeof(int64_t);
  int device = 0, sms = 0, optin = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  // Each grid block rescans the tables, so a few blocks per SM and grid-stride beyond that.
  const int grid = std::min(GridFor(total_rows, kPermThreads / 32), std::max(2 * sms, 1));
  const bool vec = D % 4 == 0 && Aligned16(in) && Aligned16(out);
  if (vec) {
    LaunchPermuteBlocks(reinterpret_cast<const float4*>(in), reinterpret_cast<float4*>(out), D / 4,
                        block_rows, ep, el, groups, to_expert_major, grid, smem, optin, stream);
  } else {
    LaunchPermuteBlocks(in, out, D, block_rows, ep, el, groups, to_expert_major, grid, smem, optin,
                        stream);
  }
}

}  // namespace moe
