#include "core/tensor.h"

#include <glog/logging.h>

#include <sstream>

#include "core/backend.h"

namespace moe {

const char* DeviceName(Device d) { return d == Device::kCPU ? "cpu" : "cuda"; }

const char* DTypeName(DType t) { return t == DType::kFloat32 ? "float32" : "int32"; }

size_t DTypeSize(DType t) { return t == DType::kFloat32 ? sizeof(float) : sizeof(int32_t); }

int64_t NumelOf(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) {
    CHECK_GE(s, 0) << "negative dimension";
    n *= s;
  }
  return n;
}

namespace {
// The backend that moves bytes between two devices: the device one, if either side is one.
const Backend& CopyBackend(Device a, Device b) {
  return BackendFor(a == Device::kCPU ? b : a);
}
}  // namespace

Tensor::Tensor(std::vector<int64_t> shape, Device device, DType dtype)
    : shape_(std::move(shape)), numel_(NumelOf(shape_)), device_(device), dtype_(dtype) {
  if (numel_ > 0) {
    const Backend* backend = &BackendFor(device_);  // lives to the end of the process
    void* p = backend->Allocate(static_cast<size_t>(numel_) * DTypeSize(dtype_));
    storage_ = std::shared_ptr<void>(p, [backend](void* q) { backend->Free(q); });
    data_ = p;
  }
}

Tensor Tensor::Zeros(std::vector<int64_t> shape, Device device, DType dtype) {
  Tensor t(std::move(shape), device, dtype);
  t.Zero();
  return t;
}

Tensor Tensor::FromVector(std::vector<int64_t> shape, const std::vector<float>& values) {
  Tensor t(std::move(shape));
  CHECK_EQ(t.numel(), static_cast<int64_t>(values.size())) << "FromVector: shape/values mismatch";
  std::copy(values.begin(), values.end(), t.data());
  return t;
}

Tensor Tensor::FromInt32Vector(std::vector<int64_t> shape, const std::vector<int32_t>& values) {
  Tensor t(std::move(shape), Device::kCPU, DType::kInt32);
  CHECK_EQ(t.numel(), static_cast<int64_t>(values.size()))
      << "FromInt32Vector: shape/values mismatch";
  std::copy(values.begin(), values.end(), t.int32_data());
  return t;
}

void Tensor::DTypeMismatch(DType wanted) const {
  LOG(FATAL) << "tensor " << ShapeString() << " holds " << DTypeName(dtype_) << ", read as "
             << DTypeName(wanted);
  __builtin_unreachable();
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
  return data()[i];
}
float Tensor::at(int64_t i) const {
  DCHECK(device_ == Device::kCPU);
  DCHECK(i >= 0 && i < numel_);
  return data()[i];
}

Tensor Tensor::Reshape(std::vector<int64_t> shape) const {
  CHECK_EQ(NumelOf(shape), numel_) << "Reshape " << ShapeString() << " to a different size";
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::Clone() const {
  Tensor t(shape_, device_, dtype_);
  t.CopyFrom(*this);
  return t;
}

void Tensor::Fill(float v) {
  float* p = data();
  if (numel_ > 0) BackendFor(device_).Fill(p, numel_, v);
}

void Tensor::Zero() {
  // Both element types are 32 bits wide and 0.f is all zero bits, so one fill serves both.
  if (numel_ > 0) BackendFor(device_).Fill(static_cast<float*>(data_), numel_, 0.f);
}

void Tensor::CopyFrom(const Tensor& src) {
  CHECK_EQ(src.numel(), numel_) << "CopyFrom " << src.ShapeString() << " into " << ShapeString();
  CHECK(src.dtype() == dtype_) << "CopyFrom " << DTypeName(src.dtype()) << " into "
                               << DTypeName(dtype_);
  const size_t bytes = static_cast<size_t>(numel_) * DTypeSize(dtype_);
  if (numel_ > 0)
    CopyBackend(device_, src.device_).Copy(data_, device_, src.data_, src.device_, bytes);
}

std::vector<float> Tensor::ToVector() const {
  std::vector<float> v(static_cast<size_t>(numel_));
  const float* p = data();
  if (numel_ > 0)
    CopyBackend(Device::kCPU, device_)
        .Copy(v.data(), Device::kCPU, p, device_, v.size() * sizeof(float));
  return v;
}

std::vector<int32_t> Tensor::ToInt32Vector() const {
  std::vector<int32_t> v(static_cast<size_t>(numel_));
  const int32_t* p = int32_data();
  if (numel_ > 0)
    CopyBackend(Device::kCPU, device_)
        .Copy(v.data(), Device::kCPU, p, device_, v.size() * sizeof(int32_t));
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
