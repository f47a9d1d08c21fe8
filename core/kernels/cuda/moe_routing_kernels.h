// MoE router kernels on device pointers: router noise (Philox, bit-identical to core/rng.cc), row
// softmax and its backward, top-k, the Batch Prioritized Routing order, capacity slot assignment
// and the send-buffer layout. Each mirrors a CPU function (models/moe/router_math.h,
// slot_assignment.h, MoeLayer::Route/BuildSendLayout) and tests/gpu/moe_kernels_test.cc checks it
// against that function: integer outputs exactly, the noise bit for bit.
//
// Conventions: row-major [rows, E] arrays; a routing group is `group_tokens` consecutive rows and
// `groups` of them are processed by one launch. Every launch is asynchronous on `stream`
// (nullptr = legacy default stream); launch errors are fatal (CUDA_CHECK_LAUNCH). Limits (checked
// on the host with glog CHECK): E <= 256 for softmax and top-k, groups * group_tokens * k < 2^31.
// See the .cu for launch configurations.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace moe {

// ---- random numbers ----

// out[j] = CounterRng(key).Normal(i, j0 + j) for j < n, bit-identical to the CPU.
void CounterNormalCuda(uint64_t key, uint64_t i, uint64_t j0, int64_t n, float* out,
                       cudaStream_t stream = nullptr);
// out[j] = CounterRng(key).Uniform(i, j0 + j) for j < n, bit-identical to the CPU.
void CounterUniformCuda(uint64_t key, uint64_t i, uint64_t j0, int64_t n, float* out,
                        cudaStream_t stream = nullptr);

// noisy[g*n*E + i] = clean[g*n*E + i]
//                    + sigma * CounterRng(key).NormalF32(first_global_group + g, i)
// for g < groups, i < n*E (n = group_tokens), in float without FMA contraction: bit-identical to
// MoeLayer::Route, whose key is MixKey(MixKey(seed, HashString(name + ".router_noise")), step).
// noisy may alias clean.
void AddRouterNoiseCuda(const float* clean, float* noisy, int64_t groups, int64_t group_tokens,
                        int E, float sigma, uint64_t key, int64_t first_global_group,
                        cudaStream_t stream = nullptr);

// ---- softmax and top-k (one warp per row, E <= 256) ----

// probs = softmax(logits) per row: float max, exp and the sum in double summed in index order,
// as SoftmaxRows (core/kernels/cpu/softmax.cc). probs may alias logits.
void SoftmaxRowsCuda(const float* logits, int64_t n, int E, float* probs,
                     cudaStream_t stream = nullptr);
// dlogits = p * (dp - sum_j p_j dp_j) per row (dot in double, index order). WRITES dlogits;
// dlogits may alias dprobs.
void SoftmaxRowsBackwardCuda(const float* probs, const float* dprobs, int64_t n, int E,
                             float* dlogits, cudaStream_t stream = nullptr);
// TopKRows: expert[t*k + r] = the r-th largest probs[t, :], ties -> lower index, gate = that prob.
// Reproduces the CPU scan exactly, NaN rows included. 1 <= k <= E <= 256.
void TopKRowsCuda(const float* probs, int64_t n, int E, int k, int* expert, float* gate,
                  cudaStream_t stream = nullptr);

// ---- capacity slots (per routing group) ----

// BPR order per group: order[g*n + p] = the token (0..n-1, local to the group) at position p when
// the group's tokens are stably sorted by gate[(g*n + t)*k] descending (NaN last, -0 == +0), as
// BatchPrioritizedOrder. n <= 4096: one block per group sorts in shared memory; larger n uses
// cub::DeviceSegmentedRadixSort with stream-ordered scratch (cudaMallocAsync/cudaFreeAsync).
void BatchPrioritizedOrderCuda(const float* gate, int64_t groups, int64_t group_tokens, int k,
                               int* order, cudaStream_t stream = nullptr);

// AssignSlots per group: pass r = 0..k-1, tokens in `order` (nullptr = identity; otherwise a
// permutation of 0..n-1 per group, as BatchPrioritizedOrderCuda writes, not checked);
// slot[(g*n + t)*k + r] = running count of that expert - 1, or -1 once it holds `capacity`
// (capacity < 0: dropless). counts[g*E + e] = filled slots of expert e in group g (int64, as
// AssignSlots; dropped per group = n*k - sum_e counts). An expert id outside [0, E) traps the
// kernel (the CPU CHECK-fails). E <= 1024.
void AssignSlotsCuda(const int* expert, const int* order, int64_t groups, int64_t group_tokens,
                     int k, int E, int64_t capacity, int* slot, int64_t* counts,
                     cudaStream_t stream = nullptr);

// Send layout as MoeLayer::BuildSendLayout: block (e, g) -> index e*G + g (expert-major),
// block_rows = capacity (or counts[g*E + e] when capacity < 0), block_offset = exclusive prefix
// sum of block_rows in that order; *send_rows (device, nullable) = the total. counts may be
// nullptr when capacity >= 0.
void SendLayoutCuda(const int64_t* counts, int64_t groups, int E, int64_t capacity,
                    int64_t* block_rows, int64_t* block_offset, int64_t* send_rows,
                    cudaStream_t stream = nullptr);

}  // namespace moe

#ifdef __CUDACC__
#include "core/rng_normal.h"

// Device-side counter RNG for other kernels (dropout, ...): the same functions as core/rng.cc.
namespace moe {
namespace cuda_rng {

__device__ __forceinline__ uint4 Philox4x32(uint4 c, uint64_t key) {
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = __umulhi(0xD2511F53u, c.x), lo0 = 0xD2511F53u * c.x;
    const uint32_t hi1 = __umulhi(0xCD9E8D57u, c.z), lo1 = 0xCD9E8D57u * c.z;
    c = make_uint4(hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0);
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c;
}

__device__ __forceinline__ uint4 PhiloxBlock(uint64_t key, uint64_t i, uint64_t j) {
  return Philox4x32(make_uint4(static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32),
                               static_cast<uint32_t>(j), static_cast<uint32_t>(j >> 32)),
                    key);
}

__device__ __forceinline__ float Uniform(uint64_t key, uint64_t i, uint64_t j) {
  const uint4 r = PhiloxBlock(key, i, j);
  return static_cast<float>((static_cast<double>(r.x) + 0.5) * (1.0 / 4294967296.0));
}

// Box-Muller in double exactly as the CPU writes it. sqrt and the arithmetic are IEEE on both
// sides; log and cos are within 1-2 double ulp of glibc's, which the float rounding absorbs
// except with probability ~2^-28 per draw (never seen in the tests' draws).
__device__ __forceinline__ float Normal(uint64_t key, uint64_t i, uint64_t j) {
  const uint4 r = PhiloxBlock(key, i, j);
  const double u1 = (static_cast<double>(r.x) + 0.5) * (1.0 / 4294967296.0);
  const double u2 = (static_cast<double>(r.y) + 0.5) * (1.0 / 4294967296.0);
  constexpr double kTwoPi = 2.0 * 3.14159265358979323846;  // == 2.0 * M_PI, exactly
  return static_cast<float>(sqrt(-2.0 * log(u1)) * cos(kTwoPi * u2));
}

// CounterRng::NormalF32: the router noise's float Box-Muller, from the one definition the host
// also compiles (core/rng_normal.h), so the two agree bit for bit.
__device__ __forceinline__ float NormalF32(uint64_t key, uint64_t i, uint64_t j) {
  const uint64_t block = j >> 2;
  const uint4 r = Philox4x32(
      make_uint4(static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32),
                 static_cast<uint32_t>(block),
                 static_cast<uint32_t>(block >> 32) | normal_f32::kBlockTag),
      key);
  return normal_f32::FromBlock(r.x, r.y, r.z, r.w, static_cast<int>(j & 3));
}

}  // namespace cuda_rng
}  // namespace moe
#endif  // __CUDACC__
