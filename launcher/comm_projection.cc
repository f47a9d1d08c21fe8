#include "launcher/comm_projection.h"

#include <algorithm>
#include <cstdio>

namespace moe {

LinkModel LinkModelOf(const ClusterFigures& c) {
  LinkModel m;
  m.alpha_intra = c.alpha_intra_us * 1e-6;
  m.beta_intra = 1.0 / (c.nvlink_gbs * 1e9);
  m.alpha_inter = c.alpha_inter_us * 1e-6;
  m.beta_inter = 1.0 / (c.ib_gbs * 1e9);
  m.has_inter = true;
  return m;
}

std::string ProjectionAssumptions(const ClusterFigures& c) {
  char buf[1600];
  snprintf(buf, sizeof(buf),
           "# MODEL (alpha-beta, not a measurement): %d GPUs per node\n"
           "#   intra-node: NVLink %.0f GB/s per GPU per direction (NVIDIA H100 SXM datasheet:\n"
           "#     NVLink 900 GB/s per GPU, total bidirectional); alpha %.1f us (assumed NCCL\n"
           "#     all-to-all latency inside a node)\n"
           "#   inter-node: InfiniBand %.0f GB/s per GPU per direction (NDR 400 Gb/s = 50 GB/s,\n"
           "#     one NIC per GPU); alpha %.1f us (assumed NCCL all-to-all latency across nodes)\n"
           "#   t(exchange) = alpha_intra + bytes_intra / bw_intra + alpha_inter\n"
           "#     + bytes_inter / bw_inter (levels summed: no overlap assumed, an upper bound)\n"
           "#   experts: 12 * rows * D * H FLOPs per forward+backward at %.0f TFLOP/s sustained\n"
           "#     (assumed: ~40%% of H100 SXM's 989 TFLOP/s dense bf16); activations %d bytes\n"
           "#     per element; share = 4 exchanges / (4 exchanges + experts)\n",
           c.gpus_per_node, c.nvlink_gbs, c.alpha_intra_us, c.ib_gbs, c.alpha_inter_us,
           c.flops_per_s / 1e12, c.bytes_per_element);
  return buf;
}

std::string ProjectionTable(const LayerShape& shape, const ClusterFigures& c,
                            const std::vector<int>& eps) {
  const LinkModel m = LinkModelOf(c);
  char buf[400];
  snprintf(buf, sizeof(buf),
           "# %s: D=%d H=%d E=%d k=%d cf=%.2f, %lld tokens per GPU, groups of %lld tokens\n"
           "%5s %5s %4s | %11s %9s %9s | %11s %9s %10s %7s\n",
           shape.name.c_str(), shape.dim, shape.hidden, shape.experts, shape.top_k,
           shape.capacity, static_cast<long long>(shape.tokens),
           static_cast<long long>(shape.group_tokens), "EP", "nodes", "E", "MB/exchange",
           "intra_MB", "inter_MB", "exchange_us", "a2a_ms", "experts_ms", "share");
  std::string out = buf;
  for (int ep : eps) {
    LayerShape s = shape;
    s.experts = std::max(shape.experts, ep);
    const Prediction p = Predict(m, s, ep, c.gpus_per_node, c.bytes_per_element, c.flops_per_s);
    const LevelBytes lb = SplitBytes(p.bytes, ep, c.gpus_per_node);
    snprintf(buf, sizeof(buf), "%5d %5d %4d | %11.3f %9.3f %9.3f | %11.1f %9.4f %10.4f %6.1f%%\n",
             ep, (ep + c.gpus_per_node - 1) / c.gpus_per_node, s.experts, p.bytes / 1e6,
             lb.intra / 1e6, lb.inter / 1e6, 1e6 * p.exchange_s, 1e3 * p.a2a_s,
             1e3 * p.experts_s, 100 * p.share);
    out += buf;
  }
  return out;
}

}  // namespace moe
