// How much host memory one rank of a run will need, estimated from the config alone, so that a
// config that cannot fit (a capacity factor of 1e9, 100,000 experts) is refused in a second with
// the field that makes it big, instead of failing an allocation minutes later without a name.
//
// What is counted (float32 everywhere, the CPU path):
//   parameters   this rank's dense parameters (replicated) and its shard of the experts, counted
//                layer by layer the way each family builds its net (exact: the unit test compares
//                them with a built TrainingSession);
//   optimizer    gradients, AdamW's m and v, and the dense-gradient all-reduce bucket;
//   MoE buffers  per MoE layer, the capacity-padded rows of one step (E x groups x C rows, as
//                sent and received) kept from forward to backward: the expert input and output
//                (2 x dim) and the expert hidden pre- and post-activation (2 x hidden), plus the
//                largest layer's transient pack/exchange copies (3 x dim);
//   activations  rough: per block, batch x tokens x (8 x hidden_dim + 2 x mlp_dim) plus the
//                attention probabilities;
//   data         the Fashion-MNIST train and test images as floats (70,000 x pixels);
//   runtime      a fixed allowance for MPI, OpenBLAS and the binary.
// It is an estimate: the refusal threshold (CheckMemoryFits) leaves headroom for the rest.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "proto/moe_ep.pb.h"

namespace moe {

// `count` identical MoE layers (a ViT's are all alike; a Sparse-MLP has a MoE_S and a MoE_C
// shape), counted rather than listed so that any num_layers stays cheap to estimate.
struct MoeBufferEstimate {
  int dim = 0, hidden = 0;
  double count = 1;
  double rows_train =
      0;  // capacity-padded rows per step on this rank (= MoeMetrics::capacity_slots)
  double rows_eval = 0;  // the same at the eval capacity factor
};

struct MemoryEstimate {
  double dense_params = 0;   // this rank's non-expert parameters (every rank holds them all)
  double expert_params = 0;  // this rank's expert parameters (its E / ep_size experts)
  std::vector<MoeBufferEstimate> moe_layers;  // one entry per shape
  double parameter_bytes = 0, optimizer_bytes = 0, moe_buffer_bytes = 0;
  double activation_bytes = 0, data_bytes = 0, runtime_bytes = 0;

  double total_bytes() const {
    return parameter_bytes + optimizer_bytes + moe_buffer_bytes + activation_bytes + data_bytes +
           runtime_bytes;
  }
  // "1.4 PiB (MoE buffers 1.4 PiB, parameters 1.4 MiB, optimizer 4.3 MiB, ...)".
  std::string Describe() const;
};

// The estimate for one rank of a world of `world_size` ranks. The config must have passed
// ValidateTrainConfig (shapes divide, family known); any size is allowed (arithmetic in double).
MemoryEstimate EstimateRankMemory(const proto::TrainConfig& config, int world_size);

// Bytes this process may still allocate: /proc/meminfo MemAvailable (sysconf pages where that
// is missing), lowered to the cgroup v2 limit's headroom when one applies.
double AvailableHostMemoryBytes();

// "" when the estimate fits in `fraction` of `available_bytes` shared by `ranks_on_host` ranks;
// otherwise a config error naming the set field whose reset to its default shrinks the estimate
// most, its value, the estimate, and the memory the host has.
std::string CheckMemoryFits(const proto::TrainConfig& config, int world_size, int ranks_on_host,
                            double available_bytes, double fraction = 0.9);

// 1536 -> "1.5 KiB"; 2.6e14 -> "238 TiB".
std::string FormatBytes(double bytes);

}  // namespace moe
