// The two orders of the blocks an EP rank receives: as the all-to-all delivers them,
// [src rank][local expert][group], and as the experts consume them, [local expert][src][group].
// Shared by the CPU MoE layer and, as the reference, by the GPU kernel tests.
#pragma once

#include <cstdint>
#include <vector>

namespace moe {

// rows[] holds the block sizes indexed src-major: (src * el + l) * groups + g. Same block sizes
// both ways; only the block order changes.
void PermuteBlocks(const float* in, float* out, int64_t dim, const std::vector<int64_t>& rows,
                   int ep, int el, int64_t groups, bool to_expert_major);

}  // namespace moe
