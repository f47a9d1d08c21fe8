#include "models/moe/slot_assignment.h"

#include <glog/logging.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace moe {

std::vector<int64_t> BatchPrioritizedOrder(const float* gate, int64_t n, int k) {
  CHECK_GE(n, 0);
  CHECK_GE(k, 1);
  std::vector<float> key(n);
  for (int64_t t = 0; t < n; ++t) {
    const float g = gate[t * k];
    key[t] = std::isnan(g) ? -std::numeric_limits<float>::infinity() : g;  // strict weak order
  }
  std::vector<int64_t> order = IdentityOrder(n);
  std::stable_sort(order.begin(), order.end(),
                   [&key](int64_t a, int64_t b) { return key[a] > key[b]; });
  return order;
}

std::vector<int64_t> IdentityOrder(int64_t n) {
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), int64_t{0});
  return order;
}

int64_t AssignSlots(const int* expert, int64_t n, int k, int E, int64_t capacity,
                    const std::vector<int64_t>& order, int* slot, int64_t* counts) {
  CHECK_GE(n, 0);
  CHECK_GE(k, 1);
  CHECK_GE(E, 1);
  CHECK_LE(n * k, static_cast<int64_t>(std::numeric_limits<int>::max())) << "AssignSlots: slots are int";
  CHECK_EQ(static_cast<int64_t>(order.size()), n) << "AssignSlots: order must list every token";
  {
    std::vector<char> seen(n, 0);
    for (int64_t t : order) {
      CHECK(t >= 0 && t < n && !seen[t]) << "AssignSlots: order is not a permutation (token " << t
                                         << ")";
      seen[t] = 1;
    }
  }
  std::fill(counts, counts + E, int64_t{0});
  int64_t dropped = 0;
  for (int r = 0; r < k; ++r) {
    for (int64_t t : order) {
      const int e = expert[t * k + r];
      CHECK(e >= 0 && e < E) << "AssignSlots: expert id " << e << " out of [0, " << E << ")";
      if (capacity >= 0 && counts[e] >= capacity) {
        slot[t * k + r] = -1;
        ++dropped;
      } else {
        slot[t * k + r] = static_cast<int>(counts[e]++);
      }
    }
  }
  return dropped;
}

}  // namespace moe
