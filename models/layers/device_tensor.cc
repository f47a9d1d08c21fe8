#include "models/layers/device_tensor.h"

#include <atomic>
#include <limits>
#include <utility>

namespace moe {

namespace {
std::atomic<bool> g_poison{false};
}  // namespace

Tensor NewDeviceTensor(std::vector<int64_t> shape) {
  Tensor t(std::move(shape), Device::kCUDA);
  if (g_poison.load(std::memory_order_relaxed)) t.Fill(std::numeric_limits<float>::quiet_NaN());
  return t;
}

void SetPoisonNewDeviceTensors(bool on) { g_poison.store(on, std::memory_order_relaxed); }
bool PoisonNewDeviceTensors() { return g_poison.load(std::memory_order_relaxed); }

}  // namespace moe
