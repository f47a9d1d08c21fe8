// ExpertCompute: one backend's arithmetic for the expert bank -- one expert's two-layer MLP over
// its m rows, forward and backward. ExpertBank (expert_bank.h) keeps the parameters, the row
// bookkeeping and the caches and asks MakeExpertCompute (moe_backend.cc, the one place that picks
// a backend) for the arithmetic of its input's device: expert_compute_cpu.cc (OpenBLAS, host
// loops) or expert_compute_cuda.cc (cuBLAS and CUDA kernels on the MoE layer's stream).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "models/moe/moe_options.h"

namespace moe {

// One expert's parameters and their gradients (W1 [D, H], b1 [H], W2 [H, D], b2 [D]).
struct ExpertWeights {
  const float *w1, *b1, *w2, *b2;
  float *dw1, *db1, *dw2, *db2;
};

// The expert MLP's shape and nonlinearity.
struct ExpertShape {
  int64_t dim = 0, hidden = 0;
  MoeLayerOptions::Activation activation = MoeLayerOptions::Activation::kGelu;
};

class ExpertCompute {
 public:
  virtual ~ExpertCompute() = default;
  virtual Device device() const = 0;
  // An uninitialised [rows, cols] tensor of this device for the bank's activations and outputs.
  virtual Tensor NewRows(int64_t rows, int64_t cols) = 0;
  // m rows: pre = x W1 + b1, act = activation(pre), y = act W2 + b2. `saved` [m, H] keeps what
  // this arithmetic's Backward needs of pre: the host one activation'(pre), so that its backward
  // evaluates no erfc; the CUDA one pre itself.
  virtual void Forward(const ExpertWeights& w, const ExpertShape& s, int64_t m, const float* x,
                       float* saved, float* act, float* y) = 0;
  // Scratch for Backward's d(hidden): `count` floats, valid until the next call.
  virtual float* HiddenGradScratch(int64_t count) = 0;
  // m rows: ACCUMULATES dW2, db2, dW1, db1; dh is scratch [m, H]; writes dx = dpre W1^T.
  virtual void Backward(const ExpertWeights& w, const ExpertShape& s, int64_t m, const float* x,
                        const float* saved, const float* act, const float* dy, float* dh,
                        float* dx) = 0;
};

// The arithmetic for `device`; `stream` (a cudaStream_t, nullptr = legacy) for the CUDA one.
std::unique_ptr<ExpertCompute> MakeExpertCompute(Device device, void* stream);
std::unique_ptr<ExpertCompute> MakeCpuExpertCompute();
std::unique_ptr<ExpertCompute> MakeCudaExpertCompute(void* stream);  // CUDA builds only

}  // namespace moe
