// The router noise's bulk draw with Philox run on many blocks at once as SIMD lanes: the same
// numbers as CounterRng::FillNormalF32 (core/rng.h), bit for bit, for the hot path of every noisy
// routing step (a rows x E block of draws per routing group).
#pragma once

#include <cstdint>

#include "core/rng.h"

namespace moe {

// out[t] = rng.NormalF32(i, j0 + t) for t < n.
void FillNormalF32Lanes(const CounterRng& rng, uint64_t i, uint64_t j0, int64_t n, float* out);

}  // namespace moe
