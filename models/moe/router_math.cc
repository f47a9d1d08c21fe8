// Plain float arithmetic, each operation rounded once (the selections' loops are compiled for
// several vector widths and must give the baseline's bits).
#pragma GCC optimize("fp-contract=off")

#include "models/moe/router_math.h"

#include <glog/logging.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/kernels/cpu/softmax.h"

namespace moe {

// The host softmax (core/kernels/cpu/softmax.h): exp in float, the sum and the normalisation in
// double. The CUDA kernel (SoftmaxForwardKernel, core/kernels/cuda/moe_routing_kernels.cu)
// performs the same operations in the same order, the sum included, so both give the same bits.
void SoftmaxRows(const float* logits, int64_t n, int E, float* probs) {
  CHECK_GE(n, 0);
  CHECK_GE(E, 1);
  SoftmaxForwardRows(logits, n, E, probs);
}

void SoftmaxRowsBackward(const float* probs, const float* dprobs, int64_t n, int E, float* dlogits) {
  CHECK_GE(n, 0);
  CHECK_GE(E, 1);
  SoftmaxBackwardRows(probs, dprobs, n, E, dlogits);
}

namespace {

// The reference selection: k scans, each taking the largest unused entry (strict '>' scanning
// upwards keeps the lower index on ties). Defines the order of rows holding NaN.
void TopKRowByScans(const float* p, int E, int k, std::vector<char>& used, int* expert,
                    float* gate) {
  std::fill(used.begin(), used.end(), 0);
  for (int r = 0; r < k; ++r) {
    int best = -1;
    for (int j = 0; j < E; ++j) {
      if (used[j]) continue;
      if (best < 0 || p[j] > p[best]) best = j;
    }
    used[best] = 1;
    expert[r] = best;
    gate[r] = p[best];
  }
}

// One pass keeping the k best so far in (value descending, index ascending) order: an entry
// moves ahead only of strictly smaller values, so equal values keep index order -- the scans'
// result whenever the row holds no NaN. False (outputs unspecified) when it meets a NaN.
bool TopKRowOnePass(const float* p, int E, int k, int* expert, float* gate) {
  int filled = 0;
  for (int j = 0; j < E; ++j) {
    const float v = p[j];
    if (v != v) return false;
    if (filled == k && !(v > gate[k - 1])) continue;
    int pos = filled < k ? filled++ : k - 1;
    for (; pos > 0 && v > gate[pos - 1]; --pos) {
      gate[pos] = gate[pos - 1];
      expert[pos] = expert[pos - 1];
    }
    gate[pos] = v;
    expert[pos] = j;
  }
  return true;
}

// TopKRowOnePass for k = 2, the common case, with selects instead of the insertion loop's
// data-dependent branches (the order of router probabilities is random: branches mispredict).
// Same rule: an entry moves ahead only of strictly smaller values. False when it meets a NaN.
bool Top2RowOnePass(const float* p, int E, int* expert, float* gate) {
  float g0 = p[0], g1 = -std::numeric_limits<float>::infinity();
  int e0 = 0, e1 = -1;
  bool nan = p[0] != p[0];
  for (int j = 1; j < E; ++j) {
    const float v = p[j];
    nan |= v != v;
    const bool first = v > g0, second = v > g1;
    // first: (v, old best); else second: (best, v); else unchanged.
    g1 = first ? g0 : (second ? v : g1);
    e1 = first ? e0 : (second ? j : e1);
    g0 = first ? v : g0;
    e0 = first ? j : e0;
  }
  if (nan || e1 < 0) return false;  // e1 < 0: every other entry is -inf; the scans place them
  expert[0] = e0;
  expert[1] = e1;
  gate[0] = g0;
  gate[1] = g1;
  return true;
}

// Top2RowOnePass on kTop2Lanes rows at once: the lanes are rows, so the selects vectorise
// (strided loads) where one row's E-long dependency chain cannot. Rows that the one-pass rule
// cannot settle (NaN, or fewer than two entries above -inf) are flagged for the caller.
constexpr int kTop2Lanes = 16;

__attribute__((target_clones("avx512f", "avx2", "default"))) void Top2RowsLanes(
    const float* p, int E, int* expert, float* gate, bool* unsettled) {
  float g0[kTop2Lanes], g1[kTop2Lanes];
  int e0[kTop2Lanes], e1[kTop2Lanes], nan[kTop2Lanes];
  for (int r = 0; r < kTop2Lanes; ++r) {
    g0[r] = p[r * E];
    g1[r] = -std::numeric_limits<float>::infinity();
    e0[r] = 0;
    e1[r] = -1;
    nan[r] = g0[r] != g0[r];
  }
  for (int j = 1; j < E; ++j) {
    for (int r = 0; r < kTop2Lanes; ++r) {
      const float v = p[r * E + j];
      nan[r] |= v != v;
      const bool first = v > g0[r], second = v > g1[r];
      g1[r] = first ? g0[r] : (second ? v : g1[r]);
      e1[r] = first ? e0[r] : (second ? j : e1[r]);
      g0[r] = first ? v : g0[r];
      e0[r] = first ? j : e0[r];
    }
  }
  for (int r = 0; r < kTop2Lanes; ++r) {
    unsettled[r] = nan[r] || e1[r] < 0;
    expert[2 * r] = e0[r];
    expert[2 * r + 1] = e1[r];
    gate[2 * r] = g0[r];
    gate[2 * r + 1] = g1[r];
  }
}

// k = 2 over all rows: blocks of kTop2Lanes rows, then row by row; unsettled rows by the scans.
void Top2Rows(const float* probs, int64_t n, int E, int* expert, float* gate) {
  std::vector<char> used(E);
  bool unsettled[kTop2Lanes];
  int64_t t = 0;
  for (; t + kTop2Lanes <= n; t += kTop2Lanes) {
    Top2RowsLanes(probs + t * E, E, expert + 2 * t, gate + 2 * t, unsettled);
    for (int r = 0; r < kTop2Lanes; ++r)
      if (unsettled[r])
        TopKRowByScans(probs + (t + r) * E, E, 2, used, expert + 2 * (t + r), gate + 2 * (t + r));
  }
  for (; t < n; ++t) {
    const float* p = probs + t * E;
    if (!Top2RowOnePass(p, E, expert + 2 * t, gate + 2 * t))
      TopKRowByScans(p, E, 2, used, expert + 2 * t, gate + 2 * t);
  }
}

}  // namespace

void TopKRows(const float* probs, int64_t n, int E, int k, int* expert, float* gate) {
  CHECK_GE(n, 0);
  CHECK(k >= 1 && k <= E) << "TopKRows: need 1 <= k <= E, got k=" << k << " E=" << E;
  if (k == 2 && E >= 2) {
    Top2Rows(probs, n, E, expert, gate);
    return;
  }
  std::vector<char> used(E);
  for (int64_t t = 0; t < n; ++t) {
    const float* p = probs + t * E;
    if (!TopKRowOnePass(p, E, k, expert + t * k, gate + t * k))
      TopKRowByScans(p, E, k, used, expert + t * k, gate + t * k);
  }
}

}  // namespace moe
