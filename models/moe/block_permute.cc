#include "models/moe/block_permute.h"

#include <algorithm>

namespace moe {

void PermuteBlocks(const float* in, float* out, int64_t dim, const std::vector<int64_t>& rows,
                   int ep, int el, int64_t groups, bool to_expert_major) {
  const int64_t nblocks = static_cast<int64_t>(ep) * el * groups;
  // rows[] is indexed in src-major order; compute each block's offset in both orders.
  std::vector<int64_t> src_major(nblocks), expert_major(nblocks);
  int64_t off = 0;
  for (int64_t b = 0; b < nblocks; ++b) {
    src_major[b] = off;
    off += rows[b];
  }
  off = 0;
  for (int l = 0; l < el; ++l)
    for (int s = 0; s < ep; ++s)
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t b = (static_cast<int64_t>(s) * el + l) * groups + g;
        expert_major[b] = off;
        off += rows[b];
      }
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t from = to_expert_major ? src_major[b] : expert_major[b];
    const int64_t to = to_expert_major ? expert_major[b] : src_major[b];
    std::copy(in + from * dim, in + (from + rows[b]) * dim, out + to * dim);
  }
}


}  // namespace moe
