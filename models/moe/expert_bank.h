// ExpertBank: the experts this rank owns (E_local = E / ep_size of them), each a two-layer MLP
// D -> H -> D with exact GELU (every family's default) or ReLU (pMoE's CNN experts). Inputs
// arrive expert-major: expert l's rows are contiguous, so each expert weight is applied with ONE
// GEMM over every row it received from every rank and group. The arithmetic is the backend's
// (ExpertCompute, expert_compute.h); the bank keeps parameters, row counts and caches.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/parameter.h"
#include "core/tensor.h"
#include "models/moe/expert_compute.h"
#include "models/moe/moe_options.h"

namespace moe {

class ExpertBank {
 public:
  // Owns global experts [first_global_expert, first_global_expert + num_local).
  // Initial values depend on (seed, name, global expert id) only, never on the sharding.
  using Activation = MoeLayerOptions::Activation;
  ExpertBank(const std::string& name, int dim, int hidden, int first_global_expert,
             int num_local, uint64_t seed, Activation activation = Activation::kGelu);

  // rows_per_expert[l] rows of `input` (expert-major, [sum rows, D]) go through expert l.
  // Returns [sum rows, D]; caches what Backward needs under `chunk` (a pipelined dispatcher
  // runs the bank once per chunk of rows; chunk 0 starts a new step and drops the others).
  Tensor Forward(const Tensor& input, const std::vector<int64_t>& rows_per_expert,
                 int chunk = 0);
  // d_output has that chunk's Forward output layout; returns d_input and accumulates weight
  // grads.
  Tensor Backward(const Tensor& d_output, int chunk = 0);

  std::vector<Parameter*> Parameters();
  // Moves every parameter's value and grad to `device`; drops the Forward caches.
  void MoveTo(Device device);
  // CUDA path: the stream (a cudaStream_t; nullptr = legacy default stream) Forward/Backward on
  // device tensors enqueue their work on. Set by the MoE layer before each call.
  void set_cuda_stream(void* stream) { cuda_stream_ = stream; }
  int num_local() const { return num_local_; }
  int dim() const { return dim_; }
  int hidden() const { return hidden_; }
  Activation activation() const { return activation_; }

 private:
  struct Expert {
    Parameter w1, b1, w2, b2;
  };
  ExpertWeights WeightsOf(int l);
  // The arithmetic for `device` (expert_compute.h), remade when the device or stream changes.
  ExpertCompute& ComputeOn(Device device);

  int dim_, hidden_, num_local_;
  Activation activation_;
  std::vector<Expert> experts_;
  // Forward caches per chunk (expert-major, same row order as the input).
  struct Cache {
    Tensor input, hidden_saved, hidden_act;
    std::vector<int64_t> rows;
  };
  std::vector<Cache> caches_;
  // The previous step's caches, whose host hidden buffers the next Forward writes over instead of
  // allocating fresh ones (fresh pages cost a page fault each on first touch).
  std::vector<Cache> previous_;
  Tensor HiddenRows(ExpertCompute& c, int chunk, Tensor Cache::*buffer, int64_t rows);
  void* cuda_stream_ = nullptr;
  std::unique_ptr<ExpertCompute> compute_;
  void* compute_stream_ = nullptr;
};

}  // namespace moe
