// The layer contract, Caffe-style: Forward caches what Backward needs; Backward takes dL/dy,
// ACCUMULATES into each parameter's grad (so shared or repeated use sums correctly) and returns
// dL/dx. Activations are 2-D [rows, features] unless a layer says otherwise; a ViT's tokens are
// [batch * tokens_per_image, dim] with an image's tokens contiguous.
//
// Devices: a layer runs where its input is. It takes its device operations from
// BackendFor(x.device()) (core/backend.h: the host kernels, or the CUDA kernels and cuBLAS in
// builds with the CUDA path), so a layer's code is its maths, the same for every device, and the
// parameters must be on the input's device first: MoveTo(Device::kCUDA). The device ops compute
// the host's float operations where the kernels allow (GEMMs through cuBLAS sum in another
// order). Every device launch is on the legacy default stream.
#pragma once

#include <glog/logging.h>

#include <string>
#include <vector>

#include "core/backend.h"
#include "core/parameter.h"
#include "core/tensor.h"

namespace moe {

class Layer {
 public:
  virtual ~Layer() = default;
  virtual Tensor Forward(const Tensor& x) = 0;
  virtual Tensor Backward(const Tensor& dy) = 0;
  virtual std::vector<Parameter*> Parameters() { return {}; }
  // Moves every parameter (value and grad) to d. Layers with other device state override.
  // Cached activations stay where they are: call Forward again after a move.
  virtual void MoveTo(Device d) {
    for (Parameter* p : Parameters()) MoveParameterTo(p, d);
  }
};

// A layer's input must be where its parameters are (a move is the caller's, not the layer's).
inline void CheckParametersOn(const std::string& layer, const Parameter& p, Device input) {
  CHECK(p.value.device() == input)
      << layer << ": input on " << DeviceName(input) << " but parameters on "
      << DeviceName(p.value.device()) << "; call MoveTo(Device::k"
      << (input == Device::kCPU ? "CPU" : "CUDA") << ") first";
}

// dy must be on the device of the Forward it belongs to.
inline void CheckSameDevice(const std::string& layer, Device dy, Device forward_input) {
  CHECK(dy == forward_input) << layer << ": dy is on " << DeviceName(dy)
                             << ", the last Forward's input on " << DeviceName(forward_input);
}

}  // namespace moe
