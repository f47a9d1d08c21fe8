#include "core/tensor.h"

#include <glog/logging.h>

#include <sstream>

#include "core/device_memory.h"

namespace moe {

const char* DeviceName(Device d) { return d == Device::kCPU ? "cpu" : "cuda"; }

int64_t NumelOf(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) {
    CHECK_GE(s, 0) << "negative dimension";
    n *= s;
  }
  return n;
}

Tensor::Tensor(std::vector<int64_t> shape, Device device)
    : shape_(std::move(shape)), numel_(NumelOf(shape_)), device_(device) {
  if (numel_ > 0) {
    float* p = DeviceAlloc(device_, static_cast<size_t>(numel_) * sizeof(float));
    Device dev = device_;
    storage_ = std::shared_ptr<float>(p, [dev](float* q) { DeviceFree(dev, q); });
    data_ = p;
  }
}

Tensor Tensor::Zeros(std::vector<int64_t> shape, Device device) {
  Tensor t(std::move(shape), device);
  t.Zero();
  return t;
}

Tensor Tensor::FromVector(std::vector<int64_t> shape, const std::vector<float>& values) {
  Tensor t(std::move(shape));
  CHECK_EQ(t.numel(), static_cast<int64_t>(values.size())) << "FromVector: shape/values mismatch";
  std::copy(values.begin(), values.end(), t.data());
  return t;
}

int64_t Tensor::dim(int i) const {
  int n = ndim();
  if (i < 0) i += n;
  CHECK(i >= 0 && i < n) << "dim " << i << " out of range for shape " << ShapeString();
  return shape_[i];
}

float& Tensor::at(int64_t i) {
  DCHECK(device_ == Device::kCPU);
  DCHECK(i >= 0 && i < numel_);
  return data_[i];
}
float Tensor::at(int64_t i) const {
  DCHECK(device_ == Device::kCPU);
  DCHECK(i >= 0 && i < numel_);
  return data_[i];
}

Tensor Tensor::Reshape(std::vector<int64_t> shape) const {
  CHECK_EQ(NumelOf(shape), numel_) << "Reshape " << ShapeString() << " to a different size";
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::Clone() const {
  Tensor t(shape_, device_);
  t.CopyFrom(*this);
  return t;
}

void Tensor::Fill(float v) {
  if (numel_ > 0) DeviceFill(device_, data_, static_cast<size_t>(numel_), v);
}

void Tensor::CopyFrom(const Tensor& src) {
  CHECK_EQ(src.numel(), numel_) << "CopyFrom " << src.ShapeString() << " into " << ShapeString();
  if (numel_ > 0)
    DeviceCopy(data_, device_, src.data_, src.device_, static_cast<size_t>(numel_) * sizeof(float));
}

std::vector<float> Tensor::ToVector() const {
  std::vector<float> v(static_cast<size_t>(numel_));
  if (numel_ > 0)
    DeviceCopy(v.data(), Device::kCPU, data_, device_, v.size() * sizeof(float));
  return v;
}

std::string Tensor::ShapeString() const {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape_.size(); ++i) os << (i ? "," : "") << shape_[i];
  os << "]";
  return os.str();
}

}  // namespace moe
