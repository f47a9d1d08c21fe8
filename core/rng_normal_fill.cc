// Same rounding rules as core/rng.cc (the draws must match the device's bit for bit): no FMA
// contraction, and no errno so that sqrt is one instruction and its loop vectorises.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off", "no-math-errno")
#endif
#if defined(__clang__)
#pragma clang fp contract(off)
#endif

#include "core/rng_normal_fill.h"

#include <algorithm>

#include "core/rng_normal.h"

namespace moe {

namespace {

constexpr int kLanes = 64;  // Philox blocks per chunk: 256 draws

// Philox4x32-10 (core/rng.cc, Philox4x32) on `count` consecutive blocks of stream i, lanes in
// structure-of-arrays form so the 32 x 32 -> 64-bit products vectorise; integer arithmetic, so
// every width gives the same words. The clones (AVX-512, AVX2, baseline) only change the speed.
__attribute__((target_clones("avx512f", "avx2", "default"))) void PhiloxLanes(
    uint64_t key, uint64_t i, uint64_t first_block, int count, uint32_t (*w)[kLanes]) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  uint32_t* c0 = w[0];
  uint32_t* c1 = w[1];
  uint32_t* c2 = w[2];
  uint32_t* c3 = w[3];
  for (int b = 0; b < count; ++b) {
    const uint64_t block = first_block + b;
    c0[b] = static_cast<uint32_t>(i);
    c1[b] = static_cast<uint32_t>(i >> 32);
    c2[b] = static_cast<uint32_t>(block);
    c3[b] = static_cast<uint32_t>(block >> 32) | normal_f32::kBlockTag;
  }
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    for (int b = 0; b < count; ++b) {
      const uint64_t p0 = static_cast<uint64_t>(kMul0) * c0[b];
      const uint64_t p1 = static_cast<uint64_t>(kMul1) * c2[b];
      const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
      const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
      const uint32_t n0 = hi1 ^ c1[b] ^ k0, n2 = hi0 ^ c3[b] ^ k1;
      c0[b] = n0;
      c1[b] = lo1;
      c2[b] = n2;
      c3[b] = lo0;
    }
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
}

// Box-Muller on `count` blocks' words: block b gives draws 4b..4b+3 (pairs (w0, w1), (w2, w3)),
// the same operations as normal_f32::BoxMullerPair, each step one straight loop that vectorises.
__attribute__((target_clones("avx512f", "avx2", "default"))) void BoxMullerLanes(
    const uint32_t (*w)[kLanes], int count, float* out) {
  uint32_t radius_word[2 * kLanes], angle_word[2 * kLanes];
  float radius_sq[2 * kLanes], cos_turn[2 * kLanes], sin_turn[2 * kLanes];
  for (int b = 0; b < count; ++b) {
    radius_word[2 * b] = w[0][b];
    angle_word[2 * b] = w[1][b];
    radius_word[2 * b + 1] = w[2][b];
    angle_word[2 * b + 1] = w[3][b];
  }
  for (int p = 0; p < 2 * count; ++p) {
    radius_sq[p] = normal_f32::RadiusSquared(radius_word[p]);
    normal_f32::CosSinTurn(angle_word[p] >> 8, &cos_turn[p], &sin_turn[p]);
  }
  for (int p = 0; p < 2 * count; ++p) {
    const float r = normal_f32::Sqrt(radius_sq[p]);
    out[2 * p] = normal_f32::Mul(r, cos_turn[p]);
    out[2 * p + 1] = normal_f32::Mul(r, sin_turn[p]);
  }
}

}  // namespace

void FillNormalF32Lanes(const CounterRng& rng, uint64_t i, uint64_t j0, int64_t n, float* out) {
  int64_t t = 0;
  for (; t < n && ((j0 + t) & 3) != 0; ++t) out[t] = rng.NormalF32(i, j0 + t);  // to a block
  uint32_t words[4][kLanes];
  while (t + 4 <= n) {
    const int count = static_cast<int>(std::min<int64_t>(kLanes, (n - t) / 4));
    PhiloxLanes(rng.key(), i, (j0 + t) / 4, count, words);
    BoxMullerLanes(words, count, out + t);
    t += 4 * count;
  }
  for (; t < n; ++t) out[t] = rng.NormalF32(i, j0 + t);
}

}  // namespace moe
