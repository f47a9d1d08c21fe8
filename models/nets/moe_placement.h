// Which transformer blocks hold an MoE layer (models/moe/README.md, case 8).
#pragma once

#include <set>

#include "proto/moe_ep.pb.h"

namespace moe {

// 0-indexed blocks. EVERY_2: the odd blocks {1, 3, 5, ...} (V-MoE "Every-2"); LAST_N: the last
// n of those odd blocks (V-MoE "Last-n"); LAST_BLOCKS: the last n blocks, odd or even
// (Mobile V-MoE). Empty when the model does not use MoE.
std::set<int> MoeBlockIndices(const proto::ModelConfig& model);

// The even blocks {0, 2, 4, ...}: conditional MoE (Uni-Perceiver-MoE) places MoE there.
std::set<int> EvenBlockIndices(int num_layers);

}  // namespace moe
