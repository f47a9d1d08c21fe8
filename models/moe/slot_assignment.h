// Capacity slot assignment for one routing group (V-MoE fill order and Batch Prioritized Routing).
#pragma once

#include <cstdint>
#include <vector>

namespace moe {

// BPR order: token ids sorted by gate[t*k + 0] (the token's largest gate, as TopKRows puts it
// first) descending; stable, so ties keep the lower token index first. NaN gates sort last.
std::vector<int64_t> BatchPrioritizedOrder(const float* gate /*[n*k]*/, int64_t n, int k);

// Assigns capacity slots. expert[t*k + r] is token t's r-th choice. Pass r = 0..k-1 places every
// token's r-th choice before any (r+1)-th choice; within a pass tokens go in `order` (a
// permutation of 0..n-1: identity = token order, or BatchPrioritizedOrder). Then
//   slot[t*k + r] = (running count of that expert) - 1, or -1 (dropped) if the expert already
//   holds `capacity` slots; capacity < 0 means unlimited (dropless).
// counts[E] is overwritten with the filled slots per expert. Returns the number of dropped
// (token, choice) assignments, so kept + dropped = n*k and sum(counts) = kept.
// CHECK-fails on an expert id outside [0, E) or an `order` that is not a permutation of 0..n-1.
int64_t AssignSlots(const int* expert, int64_t n, int k, int E, int64_t capacity,
                    const std::vector<int64_t>& order, int* slot, int64_t* counts);

// The identity order 0..n-1 (vanilla routing).
std::vector<int64_t> IdentityOrder(int64_t n);

}  // namespace moe
