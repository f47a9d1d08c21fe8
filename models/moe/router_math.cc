#include "models/moe/router_math.h"

#include <glog/logging.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace moe {

void SoftmaxRows(const float* logits, int64_t n, int E, float* probs) {
  CHECK_GE(n, 0);
  CHECK_GE(E, 1);
  for (int64_t t = 0; t < n; ++t) {
    const float* l = logits + t * E;
    float* p = probs + t * E;
    float mx = l[0];
    for (int j = 1; j < E; ++j) mx = std::max(mx, l[j]);
    double sum = 0;
    for (int j = 0; j < E; ++j) {
      const double e = std::exp(static_cast<double>(l[j]) - mx);
      p[j] = static_cast<float>(e);
      sum += e;
    }
    const double inv = 1.0 / sum;
    for (int j = 0; j < E; ++j) p[j] = static_cast<float>(p[j] * inv);
  }
}

void SoftmaxRowsBackward(const float* probs, const float* dprobs, int64_t n, int E, float* dlogits) {
  CHECK_GE(n, 0);
  CHECK_GE(E, 1);
  for (int64_t t = 0; t < n; ++t) {
    const float* p = probs + t * E;
    const float* dp = dprobs + t * E;
    double dot = 0;
    for (int j = 0; j < E; ++j) dot += static_cast<double>(p[j]) * dp[j];
    float* dl = dlogits + t * E;
    for (int j = 0; j < E; ++j) dl[j] = static_cast<float>(p[j] * (dp[j] - dot));
  }
}

void TopKRows(const float* probs, int64_t n, int E, int k, int* expert, float* gate) {
  CHECK_GE(n, 0);
  CHECK(k >= 1 && k <= E) << "TopKRows: need 1 <= k <= E, got k=" << k << " E=" << E;
  std::vector<char> used(E);
  for (int64_t t = 0; t < n; ++t) {
    const float* p = probs + t * E;
    std::fill(used.begin(), used.end(), 0);
    for (int r = 0; r < k; ++r) {
      int best = -1;
      // Strict '>' scanning upwards keeps the lower index on ties.
      for (int j = 0; j < E; ++j) {
        if (used[j]) continue;
        if (best < 0 || p[j] > p[best]) best = j;
      }
      used[best] = 1;
      expert[t * k + r] = best;
      gate[t * k + r] = p[best];
    }
  }
}

}  // namespace moe
