// Tensor: a buffer of float32 (or int32) elements that owns its memory and knows its device.
//
// Deliberately small: shape + contiguous row-major storage, no strides, no autograd. Layers own
// their activations and compute gradients explicitly (see models/layers). Copies are shallow
// (shared buffer) so passing a Tensor by value is cheap; Clone() makes a deep copy.
//
// Element types: float32 (the default, every activation and parameter) and int32 (labels, routing
// indices). The typed accessors check the type: data() on an int32 tensor or int32_data() on a
// float tensor is a fatal error, so an index buffer can never be read as floats by accident.
// Memory comes from the device's backend (core/backend.h).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

namespace moe {

enum class Device { kCPU, kCUDA };
const char* DeviceName(Device d);

enum class DType { kFloat32, kInt32 };
const char* DTypeName(DType t);
size_t DTypeSize(DType t);  // bytes per element (4 for both)

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::vector<int64_t> shape, Device device = Device::kCPU,
                  DType dtype = DType::kFloat32);
  static Tensor Zeros(std::vector<int64_t> shape, Device device = Device::kCPU,
                      DType dtype = DType::kFloat32);
  static Tensor FromVector(std::vector<int64_t> shape, const std::vector<float>& values);
  static Tensor FromInt32Vector(std::vector<int64_t> shape, const std::vector<int32_t>& values);

  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t dim(int i) const;  // negative i counts from the back
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const { return numel_; }
  bool empty() const { return numel_ == 0; }
  Device device() const { return device_; }
  DType dtype() const { return dtype_; }

  // Float elements; CHECK-fails on an int32 tensor.
  float* data() {
    if (dtype_ != DType::kFloat32) DTypeMismatch(DType::kFloat32);
    return static_cast<float*>(data_);
  }
  const float* data() const {
    if (dtype_ != DType::kFloat32) DTypeMismatch(DType::kFloat32);
    return static_cast<const float*>(data_);
  }
  // Int32 elements; CHECK-fails on a float tensor.
  int32_t* int32_data() {
    if (dtype_ != DType::kInt32) DTypeMismatch(DType::kInt32);
    return static_cast<int32_t*>(data_);
  }
  const int32_t* int32_data() const {
    if (dtype_ != DType::kInt32) DTypeMismatch(DType::kInt32);
    return static_cast<const int32_t*>(data_);
  }
  // Host element access (float); CHECK-fails on a device tensor.
  float& at(int64_t i);
  float at(int64_t i) const;

  // Same buffer, new shape (element count must match).
  Tensor Reshape(std::vector<int64_t> shape) const;
  Tensor Clone() const;
  void Fill(float v);  // float tensors
  void Zero();         // either type: every element 0
  void CopyFrom(const Tensor& src);   // same numel and type; host<->device copies allowed
  std::vector<float> ToVector() const;          // float tensors
  std::vector<int32_t> ToInt32Vector() const;   // int32 tensors
  std::string ShapeString() const;

 private:
  [[noreturn]] void DTypeMismatch(DType wanted) const;

  std::vector<int64_t> shape_;
  int64_t numel_ = 0;
  Device device_ = Device::kCPU;
  DType dtype_ = DType::kFloat32;
  std::shared_ptr<void> storage_;
  void* data_ = nullptr;
};

int64_t NumelOf(const std::vector<int64_t>& shape);

}  // namespace moe
