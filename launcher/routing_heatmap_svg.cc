#include "launcher/routing_heatmap_svg.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

namespace moe {
namespace {

// Layout in SVG user units (pixels at 100% zoom). A cell is wide enough for "Ankle boot" at
// the label size, and tall enough for its value.
constexpr int kCellW = 68, kCellH = 30;
constexpr int kLeft = 80, kTop = 64, kBottom = 56, kBarGap = 24, kBarW = 18, kRight = 150;

std::string XmlEscape(const std::string& s) {
  std::string out;
  for (char ch : s) {
    switch (ch) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out.push_back(ch);
    }
  }
  return out;
}

std::string Hex(const uint8_t rgb[3]) {
  char buf[8];
  snprintf(buf, sizeof(buf), "#%02x%02x%02x", rgb[0], rgb[1], rgb[2]);
  return buf;
}

std::string Fixed(double v, int decimals) {
  char buf[32];
  snprintf(buf, sizeof(buf), "%.*f", decimals, v);
  return buf;
}

std::string ClassName(const RoutingMatrix& m, int c) {
  return m.num_classes == 10 ? FashionMnistClassName(c) : "class " + std::to_string(c);
}

void Title(const RoutingMatrix& m, std::ostringstream* os) {
  double images = 0;
  for (double n : m.class_images) images += n;
  *os << "<text x=\"" << kLeft << "\" y=\"22\" font-size=\"15\" font-weight=\"bold\">Routing of "
      << "layer " << XmlEscape(m.layer) << ": % of each class's rows kept by each expert</text>\n"
      << "<text x=\"" << kLeft << "\" y=\"42\" font-size=\"11\">final evaluation, "
      << static_cast<int64_t>(images) << " images x " << m.rows_per_image
      << " rows; a column sums to (choices per row) x 100% less what capacity dropped</text>\n";
}

// The cells, each with its value, and the row and column labels.
void Grid(const RoutingMatrix& m, double mx, std::ostringstream* os) {
  for (int e = 0; e < m.num_experts; ++e) {
    const int y = kTop + e * kCellH;
    *os << "<text x=\"" << kLeft - 8 << "\" y=\"" << y + kCellH / 2 + 4
        << "\" font-size=\"12\" text-anchor=\"end\">expert " << e << "</text>\n";
    for (int c = 0; c < m.num_classes; ++c) {
      const double v = m.RowSharePercent(e, c), t = mx > 0 ? v / mx : 0;
      uint8_t rgb[3];
      ViridisColour(t, rgb);
      const int x = kLeft + c * kCellW;
      *os << "<rect x=\"" << x << "\" y=\"" << y << "\" width=\"" << kCellW << "\" height=\""
          << kCellH << "\" fill=\"" << Hex(rgb) << "\" stroke=\"#282828\"/>\n"
          << "<text x=\"" << x + kCellW / 2 << "\" y=\"" << y + kCellH / 2 + 4
          << "\" font-size=\"11\" text-anchor=\"middle\" fill=\""
          << (t > 0.6 ? "#000000" : "#ffffff") << "\">" << Fixed(v, 1) << "</text>\n";
    }
  }
  const int below = kTop + m.num_experts * kCellH;
  for (int c = 0; c < m.num_classes; ++c)
    *os << "<text x=\"" << kLeft + c * kCellW + kCellW / 2 << "\" y=\"" << below + 16
        << "\" font-size=\"11\" text-anchor=\"middle\">" << XmlEscape(ClassName(m, c))
        << "</text>\n";
  *os << "<text x=\"" << kLeft + m.num_classes * kCellW / 2 << "\" y=\"" << below + 38
      << "\" font-size=\"12\" text-anchor=\"middle\">class (true label of the image)</text>\n";
}

// The colour bar: the scale's five stops as a vertical gradient (top = the maximum), ticks at
// 0, half and the maximum, and what the colour measures.
void ColourBar(const RoutingMatrix& m, double mx, std::ostringstream* os) {
  const int x = kLeft + m.num_classes * kCellW + kBarGap, h = m.num_experts * kCellH;
  *os << "<defs><linearGradient id=\"scale\" x1=\"0\" y1=\"1\" x2=\"0\" y2=\"0\">";
  for (int i = 0; i <= 4; ++i) {
    uint8_t rgb[3];
    ViridisColour(i / 4.0, rgb);
    *os << "<stop offset=\"" << i * 25 << "%\" stop-color=\"" << Hex(rgb) << "\"/>";
  }
  *os << "</linearGradient></defs>\n"
      << "<rect x=\"" << x << "\" y=\"" << kTop << "\" width=\"" << kBarW << "\" height=\"" << h
      << "\" fill=\"url(#scale)\" stroke=\"#282828\"/>\n";
  for (int i = 0; i <= 2; ++i) {
    const int y = kTop + h - i * h / 2;
    *os << "<line x1=\"" << x + kBarW << "\" y1=\"" << y << "\" x2=\"" << x + kBarW + 4
        << "\" y2=\"" << y << "\" stroke=\"#282828\"/>\n"
        << "<text x=\"" << x + kBarW + 7 << "\" y=\"" << y + 4 << "\" font-size=\"11\">"
        << Fixed(mx * i / 2, 1) << "%</text>\n";
  }
  const int lx = x + kBarW + 52, ly = kTop + h / 2;
  *os << "<text x=\"" << lx << "\" y=\"" << ly << "\" font-size=\"11\" text-anchor=\"middle\" "
      << "transform=\"rotate(90 " << lx << " " << ly << ")\">% of the class's rows</text>\n";
}

}  // namespace

std::string RoutingHeatmapSvg(const RoutingMatrix& m) {
  const double mx = m.MaxRowSharePercent();
  const int width = kLeft + m.num_classes * kCellW + kBarGap + kBarW + kRight;
  const int height = kTop + m.num_experts * kCellH + kBottom;
  std::ostringstream os;
  os << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
     << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
     << "\" viewBox=\"0 0 " << width << " " << height
     << "\" font-family=\"DejaVu Sans, Arial, sans-serif\">\n"
     << "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n";
  Title(m, &os);
  Grid(m, mx, &os);
  ColourBar(m, mx, &os);
  os << "</svg>\n";
  return os.str();
}

}  // namespace moe
