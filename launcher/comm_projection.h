// moe_comm_model's projection: the alpha-beta model (comm_model.h) with published link figures
// of 8-GPU H100 nodes, applied to a layer shape over EP sizes. A MODEL, not a measurement; the
// figures and their sources are printed with every table.
#pragma once

#include <string>
#include <vector>

#include "launcher/comm_model.h"

namespace moe {

struct ClusterFigures {
  int gpus_per_node = 8;
  double nvlink_gbs = 450;     // per GPU per direction (H100 SXM: 900 GB/s total bidirectional)
  double ib_gbs = 50;          // per GPU per direction (NDR 400 Gb/s, one NIC per GPU)
  double alpha_intra_us = 5;   // assumption: NCCL all-to-all latency inside a node
  double alpha_inter_us = 15;  // assumption: NCCL all-to-all latency across nodes
  double flops_per_s = 400e12; // assumption: sustained dense bf16 expert GEMMs
  int bytes_per_element = 2;   // bf16 activations
};
LinkModel LinkModelOf(const ClusterFigures& c);

// The projection table for `shape` at each EP size; experts = max(shape.experts, ep) (a layer
// cannot be split over more ranks than it has experts: beyond E, one expert per GPU).
std::string ProjectionTable(const LayerShape& shape, const ClusterFigures& c,
                            const std::vector<int>& eps);
// The figures and where they come from, as '#' lines.
std::string ProjectionAssumptions(const ClusterFigures& c);

}  // namespace moe
