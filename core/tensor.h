// Tensor: a float32 buffer that owns its memory and knows its device.
//
// Deliberately small: shape + contiguous row-major storage, no strides, no autograd. Layers own
// their activations and compute gradients explicitly (see models/layers). Copies are shallow
// (shared buffer) so passing a Tensor by value is cheap; Clone() makes a deep copy.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

namespace moe {

enum class Device { kCPU, kCUDA };
const char* DeviceName(Device d);

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::vector<int64_t> shape, Device device = Device::kCPU);
  static Tensor Zeros(std::vector<int64_t> shape, Device device = Device::kCPU);
  static Tensor FromVector(std::vector<int64_t> shape, const std::vector<float>& values);

  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t dim(int i) const;  // negative i counts from the back
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const { return numel_; }
  bool empty() const { return numel_ == 0; }
  Device device() const { return device_; }

  float* data() { return data_; }
  const float* data() const { return data_; }
  // Host element access; CHECK-fails on a device tensor.
  float& at(int64_t i);
  float at(int64_t i) const;

  // Same buffer, new shape (element count must match).
  Tensor Reshape(std::vector<int64_t> shape) const;
  Tensor Clone() const;
  void Fill(float v);
  void Zero() { Fill(0.f); }
  void CopyFrom(const Tensor& src);   // same numel; host<->device copies allowed
  std::vector<float> ToVector() const;
  std::string ShapeString() const;

 private:
  std::vector<int64_t> shape_;
  int64_t numel_ = 0;
  Device device_ = Device::kCPU;
  std::shared_ptr<float> storage_;
  float* data_ = nullptr;
};

int64_t NumelOf(const std::vector<int64_t>& shape);

}  // namespace moe
