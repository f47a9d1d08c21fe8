// NormalF32 must round every float operation once to match the device bit for bit: no FMA
// contraction in this file (GCC contracts across statements when the target has FMA). Without
// errno, sqrt is one instruction and the Box-Muller loop vectorises (its argument is never < 0).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off", "no-math-errno")
#endif
#if defined(__clang__)
#pragma clang fp contract(off)
#endif

#include "core/rng.h"

#include <algorithm>
#include <cmath>

#include "core/rng_normal.h"

namespace moe {

uint64_t HashString(std::string_view s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

uint64_t MixKey(uint64_t a, uint64_t b) {
  uint64_t z = a + 0x9E3779B97F4A7C15ull * (b + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::array<uint32_t, 4> Philox4x32(std::array<uint32_t, 4> c, uint64_t key) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = static_cast<uint64_t>(kMul0) * c[0];
    uint64_t p1 = static_cast<uint64_t>(kMul1) * c[2];
    uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c = {hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0};
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return c;
}

namespace {
inline float ToOpenUnit(uint32_t x) {
  // (x + 0.5) / 2^32 lies strictly inside (0, 1); computed in double to keep it off the ends.
  return static_cast<float>((static_cast<double>(x) + 0.5) * (1.0 / 4294967296.0));
}
}  // namespace

float CounterRng::Uniform(uint64_t i, uint64_t j) const {
  auto r = Philox4x32({static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32),
                       static_cast<uint32_t>(j), static_cast<uint32_t>(j >> 32)},
                      key_);
  return ToOpenUnit(r[0]);
}

float CounterRng::Normal(uint64_t i, uint64_t j) const {
  auto r = Philox4x32({static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32),
                       static_cast<uint32_t>(j), static_cast<uint32_t>(j >> 32)},
                      key_);
  double u1 = (static_cast<double>(r[0]) + 0.5) * (1.0 / 4294967296.0);
  double u2 = (static_cast<double>(r[1]) + 0.5) * (1.0 / 4294967296.0);
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
}

namespace {
std::array<uint32_t, 4> NormalF32Block(uint64_t key, uint64_t i, uint64_t block) {
  return Philox4x32({static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32),
                     static_cast<uint32_t>(block),
                     static_cast<uint32_t>(block >> 32) | normal_f32::kBlockTag},
                    key);
}
}  // namespace

float CounterRng::NormalF32(uint64_t i, uint64_t j) const {
  const auto w = NormalF32Block(key_, i, j >> 2);
  return normal_f32::FromBlock(w[0], w[1], w[2], w[3], static_cast<int>(j & 3));
}

// Whole blocks in chunks: the Philox words first, then r^2 and the angle's cos and sin of every
// pair in one loop of straight-line float code that the compiler vectorises, then the square
// roots (a vector sqrt needs -fno-math-errno on the command line) and the products: the same
// operations as BoxMullerPair.
void CounterRng::FillNormalF32(uint64_t i, uint64_t j0, int64_t n, float* out) const {
  int64_t t = 0;
  for (; t < n && ((j0 + t) & 3) != 0; ++t) out[t] = NormalF32(i, j0 + t);  // to a block start
  constexpr int64_t kPairs = 128;
  uint32_t radius_word[kPairs], angle_word[kPairs];
  float radius_sq[kPairs], cos_turn[kPairs], sin_turn[kPairs];
  while (t + 4 <= n) {
    const int64_t pairs = std::min(kPairs, (n - t) / 4 * 2);
    for (int64_t p = 0; p < pairs; p += 2) {
      const auto w = NormalF32Block(key_, i, (j0 + t) / 4 + p / 2);
      radius_word[p] = w[0];
      angle_word[p] = w[1];
      radius_word[p + 1] = w[2];
      angle_word[p + 1] = w[3];
    }
    for (int64_t p = 0; p < pairs; ++p) {
      radius_sq[p] = normal_f32::RadiusSquared(radius_word[p]);
      normal_f32::CosSinTurn(angle_word[p] >> 8, &cos_turn[p], &sin_turn[p]);
    }
    for (int64_t p = 0; p < pairs; ++p) {
      const float r = normal_f32::Sqrt(radius_sq[p]);
      out[t + 2 * p] = normal_f32::Mul(r, cos_turn[p]);
      out[t + 2 * p + 1] = normal_f32::Mul(r, sin_turn[p]);
    }
    t += 2 * pairs;
  }
  for (; t < n; ++t) out[t] = NormalF32(i, j0 + t);
}

}  // namespace moe
