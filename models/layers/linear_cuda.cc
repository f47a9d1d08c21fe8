// Linear's CUDA path (see linear.h): y = x W + b with cuBLAS (full FP32, no TF32) and the bias
// added by BiasAddRowsCuda; Backward accumulates dW with a beta = 1 GEMM and db with the
// deterministic ColumnSumAccumulateCuda (double sums, like the host loop). Default stream.
#ifdef MOE_EP_HAS_CUDA

#include <glog/logging.h>

#include "core/kernels/cuda/cublas_gemm.h"
#include "core/kernels/cuda/dense_kernels.h"
#include "models/layers/device_tensor.h"
#include "models/layers/linear.h"

namespace moe {

Tensor Linear::ForwardCuda(const Tensor& x) {
  CHECK(w_.value.device() == Device::kCUDA)
      << name_ << ": CUDA input but parameters on the host; call MoveTo(Device::kCUDA) first";
  x_ = x;
  const int64_t rows = x.dim(0);
  Tensor y = NewDeviceTensor({rows, out_});
  if (rows == 0) return y;
  CudaSgemm(false, false, rows, out_, in_, 1.f, x.data(), in_, w_.value.data(), out_, 0.f,
            y.data(), out_);
  if (has_bias_) BiasAddRowsCuda(y.data(), b_.value.data(), rows, out_);
  return y;
}

Tensor Linear::BackwardCuda(const Tensor& dy) {
  const int64_t rows = x_.dim(0);
  Tensor dx = NewDeviceTensor({rows, in_});
  if (rows == 0) return dx;
  // dW += x^T dy (beta = 1 accumulates).
  CudaSgemm(true, false, in_, out_, rows, 1.f, x_.data(), in_, dy.data(), out_, 1.f,
            w_.grad.data(), out_);
  if (has_bias_) ColumnSumAccumulateCuda(dy.data(), rows, out_, b_.grad.data());
  // dx = dy W^T.
  CudaSgemm(false, true, rows, in_, out_, 1.f, dy.data(), out_, w_.value.data(), out_, 0.f,
            dx.data(), in_);
  return dx;
}

}  // namespace moe

#endif  // MOE_EP_HAS_CUDA
