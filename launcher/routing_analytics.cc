#include "launcher/routing_analytics.h"

#include <glog/logging.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <iomanip>
#include <sstream>
#include <sys/stat.h>

#include "launcher/output_files.h"
#include "launcher/png_writer.h"
#include "launcher/routing_heatmap_svg.h"

namespace moe {
namespace {

// Fashion-MNIST's classes, shortened to fit a table column.
const char* const kFashionClasses[10] = {"tshirt", "trouser", "pullov", "dress", "coat",
                                         "sandal", "shirt",   "sneakr", "bag",   "boot"};
const char* const kFashionClassNames[10] = {"T-shirt/top", "Trouser", "Pullover", "Dress",
                                            "Coat",        "Sandal",  "Shirt",    "Sneaker",
                                            "Bag",         "Ankle boot"};

void AppendMatrix(std::ostringstream* os, const std::vector<double>& v, int rows, int cols) {
  *os << "[";
  for (int r = 0; r < rows; ++r) {
    *os << (r ? ", " : "") << "[";
    for (int c = 0; c < cols; ++c)
      *os << (c ? ", " : "") << static_cast<int64_t>(v[static_cast<size_t>(r) * cols + c]);
    *os << "]";
  }
  *os << "]";
}

std::string JsonEscape(const std::string& s) {
  std::string out;
  for (char ch : s) {
    if (ch == '"' || ch == '\\') out.push_back('\\');
    out.push_back(ch);
  }
  return out;
}

}  // namespace

// Viridis at five stops: perceptually even and readable in grey scale too, so small
// differences between cells show without a legend's help.
void ViridisColour(double t, uint8_t rgb[3]) {
  static const double kStops[5][3] = {
      {68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
  t = std::min(1.0, std::max(0.0, t));
  const double x = t * 4;
  const int i = std::min(3, static_cast<int>(x));
  const double f = x - i;
  for (int ch = 0; ch < 3; ++ch)
    rgb[ch] = static_cast<uint8_t>(std::lround(kStops[i][ch] * (1 - f) + kStops[i + 1][ch] * f));
}

std::string FashionMnistClassName(int c) {
  return c >= 0 && c < 10 ? kFashionClassNames[c] : std::to_string(c);
}

double RoutingMatrix::RowSharePercent(int e, int c) const {
  const double rows = class_images[c] * static_cast<double>(rows_per_image);
  return rows > 0 ? 100.0 * count(e, c) / rows : 0.0;
}

double RoutingMatrix::MaxRowSharePercent() const {
  double mx = 0;
  for (int e = 0; e < num_experts; ++e)
    for (int c = 0; c < num_classes; ++c) mx = std::max(mx, RowSharePercent(e, c));
  return mx;
}

RoutingAnalytics::RoutingAnalytics(const std::vector<MoeLayer*>& layers, int num_classes) {
  std::vector<std::string> names;
  std::vector<int> experts;
  std::vector<int64_t> rows;
  for (const MoeLayer* m : layers) {
    names.push_back(m->name());
    experts.push_back(m->options().num_experts);
    rows.push_back(m->options().tokens_per_image);
  }
  Init(names, experts, rows, num_classes);
}

RoutingAnalytics::RoutingAnalytics(const std::vector<std::string>& names,
                                   const std::vector<int>& num_experts,
                                   const std::vector<int64_t>& rows_per_image, int num_classes) {
  Init(names, num_experts, rows_per_image, num_classes);
}

void RoutingAnalytics::Init(const std::vector<std::string>& names,
                            const std::vector<int>& num_experts,
                            const std::vector<int64_t>& rows_per_image, int num_classes) {
  CHECK_EQ(names.size(), num_experts.size());
  CHECK_EQ(names.size(), rows_per_image.size());
  CHECK_GT(num_classes, 0);
  for (size_t l = 0; l < names.size(); ++l) {
    RoutingMatrix m;
    m.layer = names[l];
    m.num_experts = num_experts[l];
    m.num_classes = num_classes;
    m.rows_per_image = std::max<int64_t>(0, rows_per_image[l]);
    m.counts.assign(static_cast<size_t>(m.num_experts) * num_classes, 0);
    m.image_counts.assign(m.counts.size(), 0);
    m.class_images.assign(num_classes, 0);
    matrices_.push_back(std::move(m));
  }
}

void RoutingAnalytics::Observe(size_t layer, const std::vector<int>& labels, int64_t valid,
                               const AssignmentVisitor& visit) {
  CHECK_LT(layer, matrices_.size());
  RoutingMatrix& m = matrices_[layer];
  if (m.rows_per_image <= 0) return;
  CHECK_LE(valid, static_cast<int64_t>(labels.size()));
  const int E = m.num_experts, C = m.num_classes;
  auto class_of = [&](int64_t image) {
    const int c = labels[image];
    return c >= 0 && c < C ? c : -1;  // labels outside the table's classes are not counted
  };
  used_.assign(static_cast<size_t>(std::max<int64_t>(valid, 0)) * E, 0);
  visit([&](int64_t row, int expert, float) {
    const int64_t image = row / m.rows_per_image;
    if (image >= valid) return;  // padding
    CHECK(expert >= 0 && expert < E) << m.layer << ": expert " << expert << " out of range";
    const int c = class_of(image);
    if (c < 0) return;
    m.counts[static_cast<size_t>(expert) * C + c] += 1;
    used_[static_cast<size_t>(image) * E + expert] = 1;
  });
  for (int64_t i = 0; i < valid; ++i) {
    const int c = class_of(i);
    if (c < 0) continue;
    m.class_images[c] += 1;
    for (int e = 0; e < E; ++e)
      if (used_[static_cast<size_t>(i) * E + e]) m.image_counts[static_cast<size_t>(e) * C + c] += 1;
  }
}

void RoutingAnalytics::ObserveNet(const std::vector<MoeLayer*>& layers,
                                  const std::vector<int>& labels, int64_t valid) {
  CHECK_EQ(layers.size(), matrices_.size());
  for (size_t l = 0; l < layers.size(); ++l) {
    if (!IsTracked(l)) continue;
    const MoeLayer* m = layers[l];
    Observe(l, labels, valid, [m](const KeptAssignmentFn& fn) { m->ForEachKeptAssignment(fn); });
  }
}

void RoutingAnalytics::Reduce(Communicator* comm) {
  // Counts stay far below 2^53, so doubles sum them exactly.
  std::vector<double> buf;
  for (const RoutingMatrix& m : matrices_) {
    buf.insert(buf.end(), m.counts.begin(), m.counts.end());
    buf.insert(buf.end(), m.image_counts.begin(), m.image_counts.end());
    buf.insert(buf.end(), m.class_images.begin(), m.class_images.end());
  }
  if (buf.empty()) return;
  comm->AllReduceSum(buf.data(), static_cast<int64_t>(buf.size()), GroupKind::kWorld);
  size_t at = 0;
  for (RoutingMatrix& m : matrices_)
    for (std::vector<double>* v : {&m.counts, &m.image_counts, &m.class_images}) {
      std::copy(buf.begin() + at, buf.begin() + at + v->size(), v->begin());
      at += v->size();
    }
}

std::string FormatRoutingTable(const RoutingMatrix& m) {
  std::ostringstream os;
  char cellbuf[32];
  os << "expert";
  for (int c = 0; c < m.num_classes; ++c) {
    if (m.num_classes == 10) snprintf(cellbuf, sizeof(cellbuf), " %7s", kFashionClasses[c]);
    else snprintf(cellbuf, sizeof(cellbuf), " %7d", c);
    os << cellbuf;
  }
  for (int e = 0; e < m.num_experts; ++e) {
    snprintf(cellbuf, sizeof(cellbuf), "\n%6d", e);
    os << cellbuf;
    for (int c = 0; c < m.num_classes; ++c) {
      snprintf(cellbuf, sizeof(cellbuf), " %7.1f", m.RowSharePercent(e, c));
      os << cellbuf;
    }
  }
  // The column sums show at a glance how much capacity dropped (top_k x 100% when nothing did).
  os << "\n   sum";
  for (int c = 0; c < m.num_classes; ++c) {
    double s = 0;
    for (int e = 0; e < m.num_experts; ++e) s += m.RowSharePercent(e, c);
    snprintf(cellbuf, sizeof(cellbuf), " %7.1f", s);
    os << cellbuf;
  }
  return os.str();
}

std::string RoutingMatrixJson(const RoutingMatrix& m) {
  std::ostringstream os;
  os << "{\"routing_matrix\": {\"layer\": \"" << JsonEscape(m.layer)
     << "\", \"rows_per_image\": " << m.rows_per_image << ", \"counts\": ";
  AppendMatrix(&os, m.counts, m.num_experts, m.num_classes);
  os << ", \"image_counts\": ";
  AppendMatrix(&os, m.image_counts, m.num_experts, m.num_classes);
  os << ", \"class_images\": [";
  for (int c = 0; c < m.num_classes; ++c)
    os << (c ? ", " : "") << static_cast<int64_t>(m.class_images[c]);
  os << "]}}";
  return os.str();
}

std::vector<uint8_t> RenderRoutingHeatmap(const RoutingMatrix& m, int cell, int* width,
                                          int* height, double* max_percent) {
  CHECK_GE(cell, 2);
  const double mx = m.MaxRowSharePercent();
  *max_percent = mx;
  // Layout: grid of cells with 1-pixel lines, a gap of one cell width, then a colour bar one
  // cell wide spanning the grid's height.
  const int grid_w = m.num_classes * cell + 1, grid_h = m.num_experts * cell + 1;
  const int bar_x = grid_w + cell, bar_w = cell;
  *width = bar_x + bar_w + 1;
  *height = grid_h;
  std::vector<uint8_t> px(static_cast<size_t>(*width) * *height * 3, 255);
  auto put = [&](int x, int y, const uint8_t rgb[3]) {
    uint8_t* p = &px[(static_cast<size_t>(y) * *width + x) * 3];
    p[0] = rgb[0];
    p[1] = rgb[1];
    p[2] = rgb[2];
  };
  const uint8_t grid_colour[3] = {40, 40, 40};
  for (int y = 0; y < grid_h; ++y)
    for (int x = 0; x < grid_w; ++x) {
      const bool line = x % cell == 0 || y % cell == 0;
      if (line) {
        put(x, y, grid_colour);
        continue;
      }
      uint8_t rgb[3];
      ViridisColour(mx > 0 ? m.RowSharePercent(y / cell, x / cell) / mx : 0, rgb);
      put(x, y, rgb);
    }
  for (int y = 0; y < grid_h; ++y)
    for (int x = bar_x; x <= bar_x + bar_w; ++x) {
      const bool edge = x == bar_x || x == bar_x + bar_w || y == 0 || y == grid_h - 1;
      uint8_t rgb[3];
      ViridisColour(1.0 - static_cast<double>(y - 1) / std::max(1, grid_h - 3), rgb);
      put(x, y, edge ? grid_colour : rgb);
    }
  return px;
}

bool ReportRoutingAnalytics(const RoutingAnalytics& a, const std::string& analytics_dir,
                            MetricsWriter* metrics, std::string* error) {
  if (!analytics_dir.empty()) mkdir(analytics_dir.c_str(), 0755);  // an existing folder is fine
  for (size_t l = 0; l < a.num_layers(); ++l) {
    const RoutingMatrix& m = a.matrix(l);
    if (!a.IsTracked(l)) {
      LOG(INFO) << "routing matrix " << m.layer
                << ": skipped (the layer does not say how many rows make an image)";
      continue;
    }
    double images = 0;
    for (double n : m.class_images) images += n;
    LOG(INFO) << "routing matrix " << m.layer << " (final evaluation, " << images
              << " images x " << m.rows_per_image
              << " rows): % of each class's rows kept by each expert (rows = experts, columns = "
                 "classes; a column sums to experts per row x 100% less capacity drops: top_k for "
                 "token rules; pMoE's experts keep l of n patches of every image, so its columns "
                 "are uniform by construction)\n"
              << FormatRoutingTable(m);
    if (metrics != nullptr) metrics->WriteObject(RoutingMatrixJson(m));
    if (analytics_dir.empty()) continue;
    int w = 0, h = 0;
    double max_percent = 0;
    const std::vector<uint8_t> px = RenderRoutingHeatmap(m, /*cell=*/24, &w, &h, &max_percent);
    std::string name = m.layer;
    for (char& ch : name)
      if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '_' && ch != '-') ch = '_';
    const std::string path = analytics_dir + "/routing_" + name + ".png";
    const std::string svg_path = analytics_dir + "/routing_" + name + ".svg";
    // A heatmap that cannot be written is an output error for the caller, not a warning that
    // scrolls by: the run was asked for it.
    if (!WritePngRgb(path, w, h, px, error)) return false;
    if (!WriteWholeFile(svg_path, RoutingHeatmapSvg(m), error)) return false;
    LOG(INFO) << "routing heatmap " << m.layer << " -> " << svg_path << " (labelled: classes, "
              << "experts, every cell's value, the colour scale) and " << path << " (" << w << "x"
              << h << " px: rows = experts 0.." << m.num_experts - 1 << " top to bottom, "
              << "columns = classes 0.." << m.num_classes - 1 << " left to right, 24 px cells; "
              << "colour = % of the class's rows, viridis from 0 (purple) to " << std::fixed
              << std::setprecision(1) << max_percent << "% (yellow); bar on the right = scale)";
  }
  return true;
}

}  // namespace moe
