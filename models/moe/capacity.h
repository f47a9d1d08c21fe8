// Expert capacity per routing group (V-MoE; models/moe/README.md, "Capacity and slot filling"
// and case 1).
#pragma once

#include <cstdint>

namespace moe {

// How C = k * group_tokens * capacity_factor / E becomes an integer.
//  kCeil            ceil(x)                                (official vmoe code, our default)
//  kRound           round half away from zero               (the V-MoE paper)
//  kCeilMultipleOf4 ceil(x), then up to a multiple of 4      (vmoe with multiple_of = 4)
enum class CapacityRounding { kCeil, kRound, kCeilMultipleOf4 };

// C = rounding(top_k * group_tokens * capacity_factor / num_experts), at least 1.
//
// x is computed in double, then nudged by 1e-7 relative towards the nearest "intended" value
// before rounding: kCeil/kCeilMultipleOf4 take ceil(x * (1 - 1e-7)) (2.0000000001 -> 2, not 3;
// 2.1 -> 3), kRound takes round(x * (1 + 1e-7)) (2.4999999 -> 3 as 2.5 would). Why 1e-7 and not
// 1e-9: the config stores the capacity factor as a float, and a float is only within 2^-24 ~ 6e-8
// relative of the decimal the user wrote (1.1f = 1.10000002384, so 10 * 1.1f = 11.0000002 would
// ceil to 12). Genuine fractional parts smaller than 1e-7 * x (1e-4 at x = 1000) are treated as
// noise; with capacity factors of a few decimals they do not occur. For kCeilMultipleOf4 the
// floor of 1 is applied before rounding up, so the result is at least 4.
// CHECK-fails on top_k < 1, group_tokens < 0, capacity_factor <= 0 (or NaN), num_experts < 1.
int64_t CapacityPerExpert(int top_k, int64_t group_tokens, double capacity_factor, int num_experts,
                          CapacityRounding rounding);

}  // namespace moe
