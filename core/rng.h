// Counter-based random numbers (Philox-4x32-10), so that every draw is a pure function of
// (key, counter). This is what makes a sharded run equal a single-rank run: a parameter's initial
// value depends only on (seed, parameter name, global expert id, element index), and router noise
// only on (seed, layer, step, global routing group, token, expert) -- never on which rank asked.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

namespace moe {

// 64-bit FNV-1a: stable across platforms and runs (std::hash is not).
uint64_t HashString(std::string_view s);
// Mixes two 64-bit values into one (splitmix64 finaliser over a combination).
uint64_t MixKey(uint64_t a, uint64_t b);

// The Philox-4x32-10 block function: 4 x 32-bit outputs for a 128-bit counter and 64-bit key.
std::array<uint32_t, 4> Philox4x32(std::array<uint32_t, 4> counter, uint64_t key);

class CounterRng {
 public:
  explicit CounterRng(uint64_t key) : key_(key) {}
  uint64_t key() const { return key_; }
  // Uniform in (0, 1), never exactly 0 or 1 (safe for log).
  float Uniform(uint64_t i, uint64_t j = 0) const;
  // Standard normal (Box-Muller in double on two words of one Philox block, one draw a block).
  float Normal(uint64_t i, uint64_t j = 0) const;
  // Standard normal, the router noise's draw: Box-Muller in float (core/rng_normal.h gives the
  // exact definition) on block (i, j / 4) of a counter space of its own, four draws a block;
  // about 8x cheaper than Normal, and computed identically on the device (cuda_rng::NormalF32).
  float NormalF32(uint64_t i, uint64_t j) const;
  // out[t] = NormalF32(i, j0 + t) for t < n, each block computed once.
  void FillNormalF32(uint64_t i, uint64_t j0, int64_t n, float* out) const;

 private:
  uint64_t key_;
};

}  // namespace moe
