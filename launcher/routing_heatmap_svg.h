// The routing heatmap as an SVG document: the same expert x class matrix as the PNG
// (RenderRoutingHeatmap), but readable on its own: a title naming the layer and what the colour
// means, the class names under the columns, "expert e" beside the rows, each cell's value (% of
// the class's rows that the expert kept, one decimal) and a colour bar with its scale and
// label. Text needs no font code here: any browser or image viewer draws it.
#pragma once

#include <string>

#include "launcher/routing_analytics.h"

namespace moe {

// The whole SVG file. Classes are named after Fashion-MNIST's when the matrix has 10 of them,
// numbered otherwise.
std::string RoutingHeatmapSvg(const RoutingMatrix& m);

}  // namespace moe
