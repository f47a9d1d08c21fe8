// NewDeviceTensor: an uninitialised CUDA tensor, i.e. BackendFor(Device::kCUDA).NewTensor(shape)
// (core/backend.h), NaN-filled first while SetPoisonNewDeviceTensors(true) is on (the GPU tests
// turn it on, so an element a kernel fails to write shows up as NaN). The dense layers allocate
// through their backend; this name stays for the MoE layers' device code.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "core/backend.h"
#include "core/tensor.h"

namespace moe {

inline Tensor NewDeviceTensor(std::vector<int64_t> shape) {
  return BackendFor(Device::kCUDA).NewTensor(std::move(shape));
}

}  // namespace moe
