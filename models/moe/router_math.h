// Row-wise router math on host float arrays: softmax, its backward, and top-k selection.
// One routing group at a time: n rows (tokens) of E experts, row-major [n, E].
#pragma once

#include <cstdint>

namespace moe {

// probs[t, :] = softmax(logits[t, :]), numerically stable: max subtracted (d_j = x_j - max, in
// float), exp in float (exp_f32::Exp, within 2 ulps), sum and normalisation in double. Each
// probability is within (9.4 + |d_j|) u relative (u = 2^-24) of the exact softmax of the float
// logits: d_j's rounding, 2 ulps from its exp, 2 ulps (+ u / e) from the sum, half an ulp from the
// final rounding. probs may alias logits. Bit-identical to SoftmaxRowsCuda.
void SoftmaxRows(const float* logits, int64_t n, int E, float* probs);

// dlogits = p * (dp - sum_j p_j dp_j) per row. WRITES dlogits (does not accumulate).
void SoftmaxRowsBackward(const float* probs, const float* dprobs, int64_t n, int E, float* dlogits);

// Top-k per row: expert[t*k + r] is the r-th largest probs[t, :] (r = 0 is the max), ties broken
// by the LOWER expert index; gate[t*k + r] = probs[t, expert[t*k + r]] (not renormalised).
// The k ids of a row are always distinct and in [0, E), even with NaN inputs (then their order
// is unspecified). Requires 1 <= k <= E. One pass per row, O(n * E) for small k (a row with NaN
// takes k scans).
void TopKRows(const float* probs, int64_t n, int E, int k, int* expert, float* gate);

}  // namespace moe
