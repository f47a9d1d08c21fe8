// Plain float arithmetic, each operation rounded once: exp_f32::Exp must match the device's bit
// for bit (core/kernels/cpu/exp_f32.h).
#pragma GCC optimize("fp-contract=off")

#include "models/moe/router_math.h"

#include <glog/logging.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/kernels/cpu/exp_f32.h"
#include "core/kernels/cpu/softmax.h"

namespace moe {

// exp in float (vectorised over the row), the sum and the normalisation in double. The CUDA
// kernel (SoftmaxForwardKernel, core/kernels/cuda/moe_routing_kernels.cu) performs the same
// operations in the same order, the sum included, so both give the same bits.
void SoftmaxRows(const float* logits, int64_t n, int E, float* probs) {
  CHECK_GE(n, 0);
  CHECK_GE(E, 1);
  for (int64_t t = 0; t < n; ++t) {
    const float* x = logits + t * E;
    float* y = probs + t * E;
    float mx = x[0];
    for (int j = 1; j < E; ++j) mx = std::max(mx, x[j]);  // a NaN makes the sum, so the row, NaN
    for (int j = 0; j < E; ++j) y[j] = exp_f32::Exp(x[j] - mx);  // y may alias x: x[j] read first
    double sum = 0;
    for (int j = 0; j < E; ++j) sum += y[j];
    const double inv = 1.0 / sum;
    for (int j = 0; j < E; ++j) y[j] = static_cast<float>(y[j] * inv);
  }
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

}  // namespace

void TopKRows(const float* probs, int64_t n, int E, int k, int* expert, float* gate) {
  CHECK_GE(n, 0);
  CHECK(k >= 1 && k <= E) << "TopKRows: need 1 <= k <= E, got k=" << k << " E=" << E;
  std::vector<char> used(E);
  for (int64_t t = 0; t < n; ++t) {
    const float* p = probs + t * E;
    if (!TopKRowOnePass(p, E, k, expert + t * k, gate + t * k))
      TopKRowByScans(p, E, k, used, expert + t * k, gate + t * k);
  }
}

}  // namespace moe
