// A trainable parameter: value, gradient, and how it is synchronised.
//
// Expert parameters carry the global expert id they belong to: their gradients are reduced only
// over the data-parallel replicas of that expert, and their initial values are keyed on the
// global id so that any sharding produces the same numbers.
#pragma once

#include <string>
#include <vector>

#include "core/tensor.h"

namespace moe {

enum class InitKind { kZeros, kOnes, kNormal, kTruncNormal, kUniformFanIn };

struct Parameter {
  std::string name;         // unique, stable across runs: "block3.mlp.moe.w1"
  Tensor value;
  Tensor grad;
  int global_expert_id = -1;  // -1: dense (replicated on every rank)
  // Frozen parameters keep their value: the optimizers skip them (moments and decay included),
  // e.g. pMoE's routers in the experts-only phase. Their grads are still computed and reduced.
  bool frozen = false;
  bool is_expert() const { return global_expert_id >= 0; }
};

// Fills p.value from (seed, p.name, p.global_expert_id) alone; zeros p.grad.
// kNormal / kTruncNormal use `scale` as the std; kUniformFanIn draws U(-scale, scale).
void InitParameter(Parameter* p, InitKind kind, float scale, uint64_t seed);

// Allocates value and grad for shape, then initialises.
Parameter MakeParameter(const std::string& name, std::vector<int64_t> shape, InitKind kind,
                        float scale, uint64_t seed, int global_expert_id = -1);

// Moves p's value and grad (when not empty) to device d: allocates on d and copies (CopyFrom, so
// host<->device both ways). A tensor already on d is left as it is (same buffer). Tensors that
// shared the old buffers (e.g. a layer's cached activations) are not moved.
void MoveParameterTo(Parameter* p, Device d);

}  // namespace moe
