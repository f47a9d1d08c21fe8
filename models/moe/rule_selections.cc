#include "models/moe/rule_selections.h"

#include <glog/logging.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "models/moe/router_math.h"

namespace moe {

namespace {

// Indices of the `count` largest values of column `col` of a [rows, cols] array, descending,
// ties to the lower row (stable sort on the negated key).
std::vector<int64_t> TopRowsOfColumn(const float* a, int64_t rows, int cols, int col,
                                     int64_t count) {
  std::vector<int64_t> idx(rows);
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t x, int64_t y) {
    return a[x * cols + col] > a[y * cols + col];
  });
  idx.resize(count);
  return idx;
}

}  // namespace

void ExpertChoiceSelect(const float* scores, int64_t n, int E, int64_t capacity, int64_t* token,
                        float* gate) {
  CHECK(capacity >= 1 && capacity <= n)
      << "expert choice: capacity " << capacity << " must be in [1, tokens=" << n << "]";
  for (int e = 0; e < E; ++e) {
    const std::vector<int64_t> top = TopRowsOfColumn(scores, n, E, e, capacity);
    for (int64_t c = 0; c < capacity; ++c) {
      token[e * capacity + c] = top[c];
      gate[e * capacity + c] = scores[top[c] * E + e];
    }
  }
}

void PatchTopL(const float* scores, int64_t n, int E, int l, PatchGateMode mode, int64_t* patch,
               float* gate) {
  CHECK(l >= 1 && l <= n) << "pMoE: l=" << l << " must be in [1, patches=" << n << "]";
  for (int s = 0; s < E; ++s) {
    const std::vector<int64_t> top = TopRowsOfColumn(scores, n, E, s, l);
    double mx = scores[top[0] * E + s];
    if (mode == PatchGateMode::kSoftmaxOverAllKeepTopL)
      for (int64_t j = 0; j < n; ++j) mx = std::max<double>(mx, scores[j * E + s]);
    double z = 0;
    if (mode == PatchGateMode::kSoftmaxOverKept) {
      for (int i = 0; i < l; ++i) z += std::exp(scores[top[i] * E + s] - mx);
    } else {
      for (int64_t j = 0; j < n; ++j) z += std::exp(scores[j * E + s] - mx);
    }
    for (int i = 0; i < l; ++i) {
      patch[s * l + i] = top[i];
      gate[s * l + i] = static_cast<float>(std::exp(scores[top[i] * E + s] - mx) / z);
    }
  }
}

void PerImageRouting(const float* image_probs, int64_t B, int E, int k, int64_t tokens_per_image,
                     int* expert, float* gate) {
  std::vector<int> e(B * k);
  std::vector<float> g(B * k);
  TopKRows(image_probs, B, E, k, e.data(), g.data());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < tokens_per_image; ++t)
      for (int r = 0; r < k; ++r) {
        const int64_t at = (b * tokens_per_image + t) * k + r;
        expert[at] = e[b * k + r];
        gate[at] = g[b * k + r];
      }
}

void RenormalisedTopK(const float* probs, int64_t n, int E, int k, int* expert, float* gate) {
  TopKRows(probs, n, E, k, expert, gate);
  for (int64_t t = 0; t < n; ++t) {
    double s = 0;
    for (int r = 0; r < k; ++r) s += gate[t * k + r];
    for (int r = 0; r < k; ++r) gate[t * k + r] = static_cast<float>(gate[t * k + r] / s);
  }
}

void MergeExpertWeights(const std::vector<const float*>& weights, const std::vector<float>& gates,
                        int64_t size, float* out) {
  CHECK_EQ(weights.size(), gates.size()) << "one gate per merged expert";
  std::fill(out, out + size, 0.f);
  for (size_t i = 0; i < weights.size(); ++i)
    for (int64_t j = 0; j < size; ++j) out[j] += gates[i] * weights[i][j];
}

}  // namespace moe
