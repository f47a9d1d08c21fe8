// MoE router kernels (see moe_routing_kernels.h for the contracts).
//
// Launch configurations and limits:
//  CounterNormal/CounterUniform/AddRouterNoise  elementwise, 256 threads, grid-stride (<= 2^20
//      blocks). Float arithmetic through __fmul_rn/__fadd_rn so nvcc cannot contract it into an
//      FMA the CPU does not do.
//  SoftmaxRows(+Backward), TopKRows  one warp per row, 128 threads (4 rows) per block,
//      grid-stride over rows. A lane holds elements lane, lane+32, ... in registers (template
//      PL = ceil(E/32) in {1,2,4,8}), so E <= 256. Sums (softmax, its backward dot) are done in
//      index order j = 0..E-1 by broadcasting each element with a shuffle: the same double
//      additions in the same order as the CPU, hence the same rounding.
//  BatchPrioritizedOrder  keys (descending-ordered gate bits << 32 | token) are unique, so an
//      ascending sort of them IS the stable descending order; no stable sort is needed.
//      n <= 4096: one 1024-thread block per group, bitonic sort of next_pow2(n) keys in dynamic
//      shared memory (<= 32 KiB). n > 4096: cub::DeviceSegmentedRadixSort, one segment per
//      group; keys and cub scratch come from cudaMallocAsync on `stream` and are freed on it.
//  AssignSlots  one 256-thread block (8 warps) per group; k passes x ceil(n/256) chunks of
//      consecutive positions of `order`. Per chunk: __match_any_sync groups the lanes of a warp
//      choosing the same expert (rank = lanes below with that expert), each warp's per-expert
//      count goes to shared memory [8][E], one thread per expert scans those 8 counts in warp
//      order and adds the carried count. No atomics: deterministic and equal to the sequential
//      fill. Shared memory 9*E ints, so E <= 1024. n * k < 2^31.
//  SendLayout  one 256-thread block, cub::BlockScan over the E*G blocks in chunks of 256.
//  Every kernel declares __launch_bounds__ equal to its launch's block size (checked at build
//  time with the registers and shared memory ptxas chose: tests/build_checks).
#include "core/kernels/cuda/moe_routing_kernels.h"

#include <cuda_runtime.h>
#include <glog/logging.h>

#include <algorithm>
#include <climits>
#include <cub/cub.cuh>

#include "core/kernels/cpu/exp_f32.h"
#include "core/kernels/cuda/cuda_check.h"

namespace moe {

namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kEltThreads = 256;
constexpr int kRowThreads = 128;  // 4 warps = 4 rows per block
constexpr int kRowsPerBlock = kRowThreads / 32;
constexpr int kMaxRowE = 256;
constexpr int kBprBlockMaxN = 4096;
constexpr int kBprThreads = 1024;
constexpr int kSlotThreads = 256;
constexpr int kSlotWarps = kSlotThreads / 32;
constexpr int kMaxSlotE = 1024;
// 256, not 1024: the scan keeps int64 values and cub's scan state in registers (92 per thread
// when compiled for 1024 threads unbounded, 92 x 1024 > 65536: the launch could never start);
// E*G is a few thousand blocks at most, 256 threads scan it in a few passes.
constexpr int kScanThreads = 256;

int GridFor(int64_t work, int threads_per_item_group) {
  const int64_t b = (std::max<int64_t>(work, 1) + threads_per_item_group - 1) / threads_per_item_group;
  return static_cast<int>(std::min<int64_t>(b, int64_t{1} << 20));  // grid-stride covers the rest
}

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

// ---- random numbers ----

__global__ void __launch_bounds__(kEltThreads)
    CounterNormalKernel(uint64_t key, uint64_t i, uint64_t j0, int64_t n, float* out) {
  for (int64_t j = GlobalThread(); j < n; j += ThreadStride())
    out[j] = cuda_rng::Normal(key, i, j0 + static_cast<uint64_t>(j));
}

__global__ void __launch_bounds__(kEltThreads)
    CounterUniformKernel(uint64_t key, uint64_t i, uint64_t j0, int64_t n, float* out) {
  for (int64_t j = GlobalThread(); j < n; j += ThreadStride())
    out[j] = cuda_rng::Uniform(key, i, j0 + static_cast<uint64_t>(j));
}

__global__ void __launch_bounds__(kEltThreads)
    AddRouterNoiseKernel(const float* clean, float* noisy, int64_t total, int64_t per_group,
                         float sigma, uint64_t key, int64_t first_group) {
  for (int64_t idx = GlobalThread(); idx < total; idx += ThreadStride()) {
    const int64_t g = idx / per_group;
    const int64_t i = idx - g * per_group;
    const float z = cuda_rng::NormalF32(key, static_cast<uint64_t>(first_group + g),
                                        static_cast<uint64_t>(i));
    noisy[idx] = __fadd_rn(clean[idx], __fmul_rn(sigma, z));  // CPU: noisy += sigma * z
  }
}

// ---- softmax, top-k: one warp per row ----

// minBlocks 1: with the thread bound alone ptxas trims PL = 8 from 70 to 56 registers to fit
// one more block per SM and spills 88 bytes doing it; 84 registers x 128 threads fit easily.
template <int PL>
__global__ void __launch_bounds__(kRowThreads, 1)
    SoftmaxForwardKernel(const float* x, int64_t n, int E, float* y) {
  const int lane = threadIdx.x & 31;
  for (int64_t row = GlobalWarp(); row < n; row += WarpStride()) {
    const float* xr = x + row * E;
    float v[PL];
    float mx = __int_as_float(0xff800000);  // -inf
#pragma unroll
    for (int c = 0; c < PL; ++c) {
      const int j = c * 32 + lane;
      v[c] = j < E ? xr[j] : 0.f;
      if (j < E) mx = fmaxf(mx, v[c]);
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, off));
    // A NaN anywhere makes the sum NaN and the whole row NaN, as on the CPU.
    // exp in float with the host's own operations (exp_f32.h), the sum in double in the host's
    // order (j ascending), so the probabilities match SoftmaxRows bit for bit.
    float e[PL];
#pragma unroll
    for (int c = 0; c < PL; ++c) e[c] = exp_f32::Exp(__fsub_rn(v[c], mx));
    double sum = 0;
#pragma unroll
    for (int c = 0; c < PL; ++c) {
      for (int l = 0; l < 32; ++l) {
        if (c * 32 + l >= E) break;  // warp-uniform
        sum += __shfl_sync(kFull, e[c], l);
      }
    }
    const double inv = 1.0 / sum;
    float* yr = y + row * E;
#pragma unroll
    for (int c = 0; c < PL; ++c) {
      const int j = c * 32 + lane;
      if (j < E) yr[j] = static_cast<float>(static_cast<double>(e[c]) * inv);
    }
  }
}

template <int PL>
__global__ void __launch_bounds__(kRowThreads)
    SoftmaxBackwardKernel(const float* y, const float* dy, int64_t n, int E, float* dx) {
  const int lane = threadIdx.x & 31;
  for (int64_t row = GlobalWarp(); row < n; row += WarpStride()) {
    float yv[PL], dv[PL];
#pragma unroll
    for (int c = 0; c < PL; ++c) {
      const int j = c * 32 + lane;
      yv[c] = j < E ? y[row * E + j] : 0.f;
      dv[c] = j < E ? dy[row * E + j] : 0.f;
    }
    double dot = 0;  // products of two floats are exact in double; the adds follow index order
#pragma unroll
    for (int c = 0; c < PL; ++c) {
      for (int l = 0; l < 32; ++l) {
        if (c * 32 + l >= E) break;
        const float a = __shfl_sync(kFull, yv[c], l), b = __shfl_sync(kFull, dv[c], l);
        dot += static_cast<double>(a) * static_cast<double>(b);
      }
    }
    const float d = static_cast<float>(dot);
#pragma unroll
    for (int c = 0; c < PL; ++c) {
      const int j = c * 32 + lane;
      if (j < E) dx[row * E + j] = __fmul_rn(yv[c], __fsub_rn(dv[c], d));
    }
  }
}

// The lowest index of the warp's row whose element is not yet taken (every lane gets it).
template <int PL>
__device__ __forceinline__ int FirstUnusedIndex(unsigned used, int lane) {
  int first = INT_MAX;
#pragma unroll
  for (int c = PL - 1; c >= 0; --c)
    if (!((used >> c) & 1u)) first = c * 32 + lane;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) first = min(first, __shfl_xor_sync(kFull, first, off));
  return first;
}

// The largest non-NaN untaken value of the warp's row, lowest index among equals (-0 == +0):
// returns its index (every lane gets it) and writes the value to *best_value.
template <int PL>
__device__ __forceinline__ int LargestUnusedIndex(const float (&v)[PL], unsigned used, int lane,
                                                  float* best_value) {
  float bv = 0.f;
  int bi = -1;
#pragma unroll
  for (int c = 0; c < PL; ++c) {
    if (((used >> c) & 1u) || isnan(v[c])) continue;
    if (bi < 0 || v[c] > bv) {
      bv = v[c];
      bi = c * 32 + lane;
    }
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(kFull, bv, off);
    const int oi = __shfl_xor_sync(kFull, bi, off);
    if (oi >= 0 && (bi < 0 || ov > bv || (ov == bv && oi < bi))) {
      bv = ov;
      bi = oi;
    }
  }
  *best_value = bv;
  return bi;
}

// The CPU scan per choice: best = first unused j; then best = j whenever p[j] > p[best], j
// ascending. If the first unused value is NaN nothing beats it and it is taken; otherwise NaNs
// never win and the result is the largest non-NaN unused value, lowest index among equals (-0 ==
// +0). Both cases are computed here with warp reductions.
template <int PL>
__global__ void __launch_bounds__(kRowThreads)
    TopKKernel(const float* probs, int64_t n, int E, int k, int* expert, float* gate) {
  const int lane = threadIdx.x & 31;
  for (int64_t row = GlobalWarp(); row < n; row += WarpStride()) {
    const float* p = probs + row * E;
    float v[PL];
    unsigned used = 0;  // bit c: element c*32 + lane is taken or does not exist
#pragma unroll
    for (int c = 0; c < PL; ++c) {
      const int j = c * 32 + lane;
      v[c] = j < E ? p[j] : 0.f;
      if (j >= E) used |= 1u << c;
    }
    for (int r = 0; r < k; ++r) {
      // k <= E guarantees an unused element: first < E.
      const int first = FirstUnusedIndex<PL>(used, lane);
      float mine = 0.f;
#pragma unroll
      for (int c = 0; c < PL; ++c)
        if (c == (first >> 5)) mine = v[c];
      const float pf = __shfl_sync(kFull, mine, first & 31);
      int best;
      float bv;
      if (isnan(pf)) {  // warp-uniform
        best = first;
        bv = pf;
      } else {
        best = LargestUnusedIndex<PL>(v, used, lane, &bv);
      }
      if ((best & 31) == lane) used |= 1u << (best >> 5);
      if (lane == 0) {
        expert[row * k + r] = best;
        gate[row * k + r] = bv;
      }
    }
  }
}

template <template <int> class Launch, typename... Args>
void DispatchPerLane(int E, Args... args) {
  if (E <= 32) {
    Launch<1>::Run(args...);
  } else if (E <= 64) {
    Launch<2>::Run(args...);
  } else if (E <= 128) {
    Launch<4>::Run(args...);
  } else {
    Launch<8>::Run(args...);
  }
}

template <int PL>
struct SoftmaxForwardLaunch {
  static void Run(const float* x, int64_t n, int E, float* y, cudaStream_t s) {
    SoftmaxForwardKernel<PL><<<GridFor(n, kRowsPerBlock), kRowThreads, 0, s>>>(x, n, E, y);
  }
};
template <int PL>
struct SoftmaxBackwardLaunch {
  static void Run(const float* y, const float* dy, int64_t n, int E, float* dx, cudaStream_t s) {
    SoftmaxBackwardKernel<PL><<<GridFor(n, kRowsPerBlock), kRowThreads, 0, s>>>(y, dy, n, E, dx);
  }
};
template <int PL>
struct TopKLaunch {
  static void Run(const float* p, int64_t n, int E, int k, int* ex, float* g, cudaStream_t s) {
    TopKKernel<PL><<<GridFor(n, kRowsPerBlock), kRowThreads, 0, s>>>(p, n, E, k, ex, g);
  }
};

// ---- Batch Prioritized Routing order ----

// Ascending order of the result = descending gate; NaN ranks as -inf (last), -0 as +0.
__device__ __forceinline__ uint32_t DescendingKey(float g) {
  uint32_t b = isnan(g) ? 0xff800000u : __float_as_uint(g);
  if (b == 0x80000000u) b = 0;
  const uint32_t ascending = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return ~ascending;
}

__device__ __forceinline__ unsigned long long BprKey(const float* gate, int64_t token_row, int k,
                                                     int t) {
  return (static_cast<unsigned long long>(DescendingKey(gate[token_row * k])) << 32) |
         static_cast<unsigned>(t);
}

__global__ void __launch_bounds__(kBprThreads)
    BprBlockSortKernel(const float* gate, int n, int k, int npow2, int* order) {
  extern __shared__ unsigned long long keys[];
  const int64_t g = blockIdx.x;
  for (int t = threadIdx.x; t < npow2; t += blockDim.x)
    keys[t] = t < n ? BprKey(gate, g * n + t, k, t) : ~0ull;  // padding sorts last
  __syncthreads();
  for (int size = 2; size <= npow2; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < npow2; i += blockDim.x) {
        const int j = i ^ stride;
        if (j > i) {  // each pair once
          const bool up = (i & size) == 0;
          const unsigned long long a = keys[i], b = keys[j];
          if ((a > b) == up) {
            keys[i] = b;
            keys[j] = a;
          }
        }
      }
      __syncthreads();
    }
  }
  for (int t = threadIdx.x; t < n; t += blockDim.x)
    order[g * n + t] = static_cast<int>(keys[t] & 0xffffffffull);
}

__global__ void __launch_bounds__(kEltThreads)
    BprKeysKernel(const float* gate, int64_t total, int n, int k, unsigned long long* keys) {
  for (int64_t idx = GlobalThread(); idx < total; idx += ThreadStride())
    keys[idx] = BprKey(gate, idx, k, static_cast<int>(idx % n));
}

__global__ void __launch_bounds__(kEltThreads)
    SegmentOffsetsKernel(int64_t groups, int n, int* offsets) {
  for (int64_t i = GlobalThread(); i <= groups; i += ThreadStride())
    offsets[i] = static_cast<int>(i * n);
}

__global__ void __launch_bounds__(kEltThreads)
    KeysToOrderKernel(const unsigned long long* keys, int64_t total, int* order) {
  for (int64_t idx = GlobalThread(); idx < total; idx += ThreadStride())
    order[idx] = static_cast<int>(keys[idx] & 0xffffffffull);
}

size_t AlignUp(size_t x) { return (x + 255) & ~size_t{255}; }

// ---- slot assignment ----

__global__ void __launch_bounds__(kSlotThreads)
    AssignSlotsKernel(const int* expert, const int* order, int n, int k, int E,
                      int64_t capacity, int* slot, int64_t* counts) {
  extern __shared__ int slot_smem[];
  int* warp_count = slot_smem;                 // [kSlotWarps][E]: counts, then warp offsets
  int* carried = slot_smem + kSlotWarps * E;   // [E]: assignments so far, all passes
  const int64_t g = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const unsigned lanes_below = (1u << lane) - 1u;
  for (int e = threadIdx.x; e < E; e += blockDim.x) carried[e] = 0;
  for (int r = 0; r < k; ++r) {
    for (int base = 0; base < n; base += kSlotThreads) {  // block-uniform loops
      for (int i = threadIdx.x; i < kSlotWarps * E; i += blockDim.x) warp_count[i] = 0;
      __syncthreads();
      const int p = base + static_cast<int>(threadIdx.x);
      const bool valid = p < n;
      int t = 0, e = -1;
      if (valid) {
        t = order ? order[g * n + p] : p;
        e = expert[(g * n + t) * k + r];
        if (e < 0 || e >= E) __trap();  // the CPU CHECK-fails on a bad expert id
      }
      const unsigned same = __match_any_sync(kFull, e);
      const int rank_in_warp = __popc(same & lanes_below);
      if (valid && rank_in_warp == 0) warp_count[warp * E + e] = __popc(same);
      __syncthreads();
      for (int x = threadIdx.x; x < E; x += blockDim.x) {
        int run = carried[x];
        for (int w = 0; w < kSlotWarps; ++w) {
          const int c = warp_count[w * E + x];
          warp_count[w * E + x] = run;
          run += c;
        }
        carried[x] = run;
      }
      __syncthreads();
      if (valid) {
        // Before reaching capacity the running count only grows by kept slots, so the rank
        // among all assignments so far is the CPU's counts[e]; from capacity on all are dropped.
        const int rank = warp_count[warp * E + e] + rank_in_warp;
        slot[(g * n + t) * k + r] = (capacity < 0 || rank < capacity) ? rank : -1;
      }
      __syncthreads();  // warp_count read before the next chunk zeroes it
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    const int64_t c = carried[e];
    counts[g * E + e] = capacity < 0 ? c : min(c, capacity);
  }
}

// ---- send layout ----

__global__ void __launch_bounds__(kScanThreads)
    SendLayoutKernel(const int64_t* counts, int64_t groups, int E, int64_t capacity,
                     int64_t* block_rows, int64_t* block_offset, int64_t* send_rows) {
  using Scan = cub::BlockScan<int64_t, kScanThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int64_t carry;
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();
  const int64_t total = groups * E;
  for (int64_t base = 0; base < total; base += kScanThreads) {
    const int64_t b = base + threadIdx.x;  // b = e * G + g
    int64_t v = 0;
    if (b < total) {
      const int64_t e = b / groups, g = b - e * groups;
      v = capacity < 0 ? counts[g * E + e] : capacity;
      block_rows[b] = v;
    }
    int64_t excl, agg;
    Scan(scan_storage).ExclusiveSum(v, excl, agg);
    if (b < total) block_offset[b] = carry + excl;
    __syncthreads();
    if (threadIdx.x == 0) carry += agg;
    __syncthreads();
  }
  if (threadIdx.x == 0 && send_rows != nullptr) *send_rows = carry;
}

}  // namespace

void CounterNormalCuda(uint64_t key, uint64_t i, uint64_t j0, int64_t n, float* out,
                       cudaStream_t stream) {
  if (n <= 0) return;
  CounterNormalKernel<<<GridFor(n, kEltThreads), kEltThreads, 0, stream>>>(key, i, j0, n, out);
  CUDA_CHECK_LAUNCH();
}

void CounterUniformCuda(uint64_t key, uint64_t i, uint64_t j0, int64_t n, float* out,
                        cudaStream_t stream) {
  if (n <= 0) return;
  CounterUniformKernel<<<GridFor(n, kEltThreads), kEltThreads, 0, stream>>>(key, i, j0, n, out);
  CUDA_CHECK_LAUNCH();
}

void AddRouterNoiseCuda(const float* clean, float* noisy, int64_t groups, int64_t group_tokens,
                        int E, float sigma, uint64_t key, int64_t first_global_group,
                        cudaStream_t stream) {
  CHECK_GE(groups, 0);
  CHECK_GE(group_tokens, 0);
  CHECK_GE(E, 1);
  const int64_t per_group = group_tokens * E, total = groups * per_group;
  if (total <= 0) return;
  AddRouterNoiseKernel<<<GridFor(total, kEltThreads), kEltThreads, 0, stream>>>(
      clean, noisy, total, per_group, sigma, key, first_global_group);
  CUDA_CHECK_LAUNCH();
}

void SoftmaxRowsCuda(const float* logits, int64_t n, int E, float* probs, cudaStream_t stream) {
  CHECK_GE(n, 0);
  CHECK(E >= 1 && E <= kMaxRowE) << "SoftmaxRowsCuda: E=" << E << " outside [1, " << kMaxRowE
                                 << "]";
  if (n == 0) return;
  DispatchPerLane<SoftmaxForwardLaunch>(E, logits, n, E, probs, stream);
  CUDA_CHECK_LAUNCH();
}

void SoftmaxRowsBackwardCuda(const float* probs, const float* dprobs, int64_t n, int E,
                             float* dlogits, cudaStream_t stream) {
  CHECK_GE(n, 0);
  CHECK(E >= 1 && E <= kMaxRowE) << "SoftmaxRowsBackwardCuda: E=" << E << " outside [1, "
                                 << kMaxRowE << "]";
  if (n == 0) return;
  DispatchPerLane<SoftmaxBackwardLaunch>(E, probs, dprobs, n, E, dlogits, stream);
  CUDA_CHECK_LAUNCH();
}

void TopKRowsCuda(const float* probs, int64_t n, int E, int k, int* expert, float* gate,
                  cudaStream_t stream) {
  CHECK_GE(n, 0);
  CHECK(E >= 1 && E <= kMaxRowE) << "TopKRowsCuda: E=" << E << " outside [1, " << kMaxRowE
                                 << "]";
  CHECK(k >= 1 && k <= E) << "TopKRowsCuda: need 1 <= k <= E, got k=" << k << " E=" << E;
  if (n == 0) return;
  DispatchPerLane<TopKLaunch>(E, probs, n, E, k, expert, gate, stream);
  CUDA_CHECK_LAUNCH();
}

void BatchPrioritizedOrderCuda(const float* gate, int64_t groups, int64_t group_tokens, int k,
                               int* order, cudaStream_t stream) {
  CHECK_GE(groups, 0);
  CHECK_GE(group_tokens, 0);
  CHECK_GE(k, 1);
  const int64_t total = groups * group_tokens;
  CHECK_LT(total * k, int64_t{INT_MAX}) << "BatchPrioritizedOrderCuda: too many tokens";
  if (total == 0) return;
  const int n = static_cast<int>(group_tokens);
  if (n <= kBprBlockMaxN) {
    int npow2 = 1;
    while (npow2 < n) npow2 <<= 1;
    CHECK_LE(groups, int64_t{INT_MAX});
    BprBlockSortKernel<<<static_cast<unsigned>(groups), kBprThreads,
                         npow2 * sizeof(unsigned long long), stream>>>(gate, n, k, npow2, order);
    CUDA_CHECK_LAUNCH();
    return;
  }
  CHECK_LT(groups, int64_t{INT_MAX});
  const int num_items = static_cast<int>(total), num_segments = static_cast<int>(groups);
  size_t temp_bytes = 0;
  CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortKeys(
      nullptr, temp_bytes, static_cast<const unsigned long long*>(nullptr),
      static_cast<unsigned long long*>(nullptr), num_items, num_segments,
      static_cast<const int*>(nullptr), static_cast<const int*>(nullptr), 0, 64, stream));
  const size_t keys_bytes = AlignUp(total * sizeof(unsigned long long));
  const size_t off_bytes = AlignUp((groups + 1) * sizeof(int));
  char* scratch = nullptr;
  CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&scratch),
                             2 * keys_bytes + off_bytes + AlignUp(temp_bytes), stream));
  auto* keys_in = reinterpret_cast<unsigned long long*>(scratch);
  auto* keys_out = reinterpret_cast<unsigned long long*>(scratch + keys_bytes);
  int* offsets = reinterpret_cast<int*>(scratch + 2 * keys_bytes);
  void* temp = scratch + 2 * keys_bytes + off_bytes;
  BprKeysKernel<<<GridFor(total, kEltThreads), kEltThreads, 0, stream>>>(gate, total, n, k,
                                                                        keys_in);
  CUDA_CHECK_LAUNCH();
  SegmentOffsetsKernel<<<GridFor(groups + 1, kEltThreads), kEltThreads, 0, stream>>>(groups, n,
                                                                                    offsets);
  CUDA_CHECK_LAUNCH();
  // Same argument types as the size query above, so both calls use one instantiation.
  const unsigned long long* keys_in_c = keys_in;
  const int* offsets_c = offsets;
  CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortKeys(temp, temp_bytes, keys_in_c, keys_out,
                                                     num_items, num_segments, offsets_c,
                                                     offsets_c + 1, 0, 64, stream));
  KeysToOrderKernel<<<GridFor(total, kEltThreads), kEltThreads, 0, stream>>>(keys_out, total,
                                                                            order);
  CUDA_CHECK_LAUNCH();
  CUDA_CHECK(cudaFreeAsync(scratch, stream));
}

void AssignSlotsCuda(const int* expert, const int* order, int64_t groups, int64_t group_tokens,
                     int k, int E, int64_t capacity, int* slot, int64_t* counts,
                     cudaStream_t stream) {
  CHECK_GE(groups, 0);
  CHECK_GE(group_tokens, 0);
  CHECK_GE(k, 1);
  CHECK(E >= 1 && E <= kMaxSlotE) << "AssignSlotsCuda: E=" << E << " outside [1, " << kMaxSlotE
                                  << "]";
  CHECK_LT(groups * group_tokens * k, int64_t{INT_MAX}) << "AssignSlotsCuda: slots are int";
  CHECK_LE(groups, int64_t{INT_MAX});
  if (groups == 0) return;
  const size_t smem = static_cast<size_t>(kSlotWarps + 1) * E * sizeof(int);
  AssignSlotsKernel<<<static_cast<unsigned>(groups), kSlotThreads, smem, stream>>>(
      expert, order, static_cast<int>(group_tokens), k, E, capacity, slot, counts);
  CUDA_CHECK_LAUNCH();
}

void SendLayoutCuda(const int64_t* counts, int64_t groups, int E, int64_t capacity,
                    int64_t* block_rows, int64_t* block_offset, int64_t* send_rows,
                    cudaStream_t stream) {
  CHECK_GE(groups, 0);
  CHECK_GE(E, 1);
  CHECK(capacity >= 0 || counts != nullptr) << "SendLayoutCuda: dropless needs counts";
  SendLayoutKernel<<<1, kScanThreads, 0, stream>>>(counts, groups, E, capacity, block_rows,
                                                   block_offset, send_rows);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moe
