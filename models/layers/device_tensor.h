// Device activations allocated by the dense layers' CUDA paths (models/layers/*_cuda.cc).
//
// NewDeviceTensor allocates an uninitialised CUDA tensor. With poisoning on (the GPU tests turn
// it on), every new one is first filled with NaN, so an element a kernel fails to write shows
// up as NaN in the result instead of passing on stale memory. Off by default (it costs a fill).
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace moe {

Tensor NewDeviceTensor(std::vector<int64_t> shape);
void SetPoisonNewDeviceTensors(bool on);
bool PoisonNewDeviceTensors();

}  // namespace moe
