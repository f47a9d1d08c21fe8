// Routing analytics: which experts each class of images uses, measured on the final evaluation
// of the test set (V-MoE's "expert specialisation" plots). Per MoE layer an expert x class
// matrix of kept assignments (a row counts once for each expert that kept it), plus per-image
// counts (images of class c that sent at least one row to expert e).
//
// Every rank observes the batches it evaluated; Reduce sums the matrices over the world in one
// all-reduce. That is exact because each test image is evaluated on exactly one rank and the
// layer reports global expert ids. Host path only: MoeLayer::ForEachKeptAssignment reads the
// host routing state, which a CUDA Forward does not leave behind.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "launcher/metrics_writer.h"
#include "models/moe/moe_layer.h"

namespace moe {

// The kept assignments of one layer's last Forward, handed out through a callback:
// visit(fn) calls fn(row, global expert, gate) once per kept assignment (the shape of
// MoeLayer::ForEachKeptAssignment, so tests can feed hand-made lists).
using KeptAssignmentFn = std::function<void(int64_t, int, float)>;
using AssignmentVisitor = std::function<void(const KeptAssignmentFn&)>;

struct RoutingMatrix {
  std::string layer;
  int num_experts = 0;
  int num_classes = 0;
  int64_t rows_per_image = 0;
  std::vector<double> counts;        // [expert * num_classes + class]: kept assignments
  std::vector<double> image_counts;  // [expert * num_classes + class]: images using the expert
  std::vector<double> class_images;  // [class]: observed images of the class

  double count(int e, int c) const { return counts[static_cast<size_t>(e) * num_classes + c]; }
  double image_count(int e, int c) const {
    return image_counts[static_cast<size_t>(e) * num_classes + c];
  }
  // Share (%) of class c's rows that expert e kept. A column sums to top_k x 100% less what
  // capacity dropped; 0 when no image of the class was observed.
  double RowSharePercent(int e, int c) const;
  // The largest RowSharePercent over all (expert, class): the top of the heatmaps' colour scale.
  double MaxRowSharePercent() const;
};

class RoutingAnalytics {
 public:
  // One matrix per MoE layer of the net. rows_per_image = options().tokens_per_image (0 leaves
  // that layer out: its rows cannot be mapped to images; IsTracked tells).
  RoutingAnalytics(const std::vector<MoeLayer*>& layers, int num_classes);
  // For tests: layers described by name, experts and rows per image.
  RoutingAnalytics(const std::vector<std::string>& names, const std::vector<int>& num_experts,
                   const std::vector<int64_t>& rows_per_image, int num_classes);

  // One evaluated batch of layer `layer`: row -> image row / rows_per_image, whose class is
  // labels[image]; only the first `valid` images count (the rest pad the batch).
  void Observe(size_t layer, const std::vector<int>& labels, int64_t valid,
               const AssignmentVisitor& visit);
  // Observe for every tracked layer of a net, after its Forward on this batch.
  void ObserveNet(const std::vector<MoeLayer*>& layers, const std::vector<int>& labels,
                  int64_t valid);
  // Sums every matrix over the world (one all-reduce). Call once, on every rank.
  void Reduce(Communicator* comm);

  size_t num_layers() const { return matrices_.size(); }
  bool IsTracked(size_t layer) const { return matrices_[layer].rows_per_image > 0; }
  const RoutingMatrix& matrix(size_t layer) const { return matrices_[layer]; }

 private:
  void Init(const std::vector<std::string>& names, const std::vector<int>& num_experts,
            const std::vector<int64_t>& rows_per_image, int num_classes);

  std::vector<RoutingMatrix> matrices_;
  std::vector<uint8_t> used_;  // scratch for per-image counts: [image * experts + expert]
};

// A compact table: rows = experts, columns = classes, values = RowSharePercent (one decimal).
std::string FormatRoutingTable(const RoutingMatrix& m);
// {"routing_matrix": {"layer": ..., "rows_per_image": ..., "counts": [[per class] per expert],
//  "image_counts": [[...]], "class_images": [...]}} on one line, no trailing newline.
std::string RoutingMatrixJson(const RoutingMatrix& m);
// The heatmap as RGB pixels: cells of `cell` x `cell` pixels (expert e = row e from the top,
// class c = column c from the left) coloured by RowSharePercent on a viridis-like scale from 0
// (dark purple) to the matrix maximum (yellow), one-pixel dark grid lines, and a colour bar on
// the right (bottom = 0, top = maximum). Sets *width, *height, *max_percent.
std::vector<uint8_t> RenderRoutingHeatmap(const RoutingMatrix& m, int cell, int* width,
                                          int* height, double* max_percent);
// The heatmaps' colour scale: t in [0, 1] (clamped) -> viridis-like RGB, dark purple to yellow.
void ViridisColour(double t, uint8_t rgb[3]);
// Fashion-MNIST's class name of label c ("T-shirt/top" .. "Ankle boot"); the number otherwise.
std::string FashionMnistClassName(int c);

// Rank 0's report after the final evaluation: per tracked layer the table (log), one
// routing_matrix JSON line (metrics, when writing), and, when analytics_dir is not empty, two
// heatmaps: analytics_dir/routing_<layer>.svg, labelled (routing_heatmap_svg.h), and the
// unlabelled pixels as routing_<layer>.png (the folder is created). A heatmap that cannot be
// written stops the report: returns false with "PATH: <step> failed: <strerror>" in *error.
// Metrics write failures stay in *metrics (MetricsWriter::ok).
bool ReportRoutingAnalytics(const RoutingAnalytics& a, const std::string& analytics_dir,
                            MetricsWriter* metrics, std::string* error);

}  // namespace moe
