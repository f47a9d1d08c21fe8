#include "models/moe/router_math.h"

#include <glog/logging.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/kernels/cpu/softmax.h"

namespace moe {

// The router's softmax is the same maths as attention's: one implementation in core.
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
