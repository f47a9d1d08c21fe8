#include "launcher/confusion_clustering.h"

#include <glog/logging.h>

#include <algorithm>
#include <sstream>

namespace moe {

std::vector<int64_t> CountConfusions(const std::vector<int>& labels,
                                     const std::vector<int>& predictions, int num_classes) {
  CHECK_EQ(labels.size(), predictions.size()) << "one prediction per label";
  std::vector<int64_t> counts(static_cast<size_t>(num_classes) * num_classes, 0);
  for (size_t i = 0; i < labels.size(); ++i) {
    CHECK(labels[i] >= 0 && labels[i] < num_classes) << "label " << labels[i];
    CHECK(predictions[i] >= 0 && predictions[i] < num_classes) << "prediction " << predictions[i];
    ++counts[labels[i] * num_classes + predictions[i]];
  }
  return counts;
}

std::vector<double> ConfusionGraph(const std::vector<int64_t>& counts, int num_classes) {
  const int C = num_classes;
  CHECK_EQ(counts.size(), static_cast<size_t>(C) * C);
  std::vector<double> rate(counts.size(), 0.0);
  for (int i = 0; i < C; ++i) {
    int64_t n = 0;
    for (int j = 0; j < C; ++j) n += counts[i * C + j];
    if (n == 0) continue;
    for (int j = 0; j < C; ++j) rate[i * C + j] = static_cast<double>(counts[i * C + j]) / n;
  }
  std::vector<double> w(counts.size(), 0.0);
  for (int i = 0; i < C; ++i)
    for (int j = 0; j < C; ++j)
      if (i != j) w[i * C + j] = rate[i * C + j] + rate[j * C + i];
  return w;
}

std::vector<int> AverageLinkageClusters(const std::vector<double>& graph, int num_classes,
                                        int num_clusters) {
  const int C = num_classes;
  CHECK_EQ(graph.size(), static_cast<size_t>(C) * C);
  CHECK(num_clusters >= 1 && num_clusters <= C)
      << "num_clusters=" << num_clusters << " must be in [1, " << C << "]";
  // Clusters kept sorted by their smallest member (members ascending), so "smaller ids win
  // ties" is simply "the first pair found wins".
  std::vector<std::vector<int>> clusters(C);
  for (int i = 0; i < C; ++i) clusters[i] = {i};
  auto link = [&](const std::vector<int>& a, const std::vector<int>& b) {
    double s = 0;
    for (int i : a)
      for (int j : b) s += graph[i * C + j];
    return s / (static_cast<double>(a.size()) * b.size());
  };
  while (static_cast<int>(clusters.size()) > num_clusters) {
    size_t best_a = 0, best_b = 1;
    double best = -1;
    for (size_t a = 0; a < clusters.size(); ++a)
      for (size_t b = a + 1; b < clusters.size(); ++b) {
        const double l = link(clusters[a], clusters[b]);
        if (l > best) {
          best = l;
          best_a = a;
          best_b = b;
        }
      }
    std::vector<int>& into = clusters[best_a];
    into.insert(into.end(), clusters[best_b].begin(), clusters[best_b].end());
    std::sort(into.begin(), into.end());
    clusters.erase(clusters.begin() + static_cast<std::ptrdiff_t>(best_b));
    // best_a < best_b and its smallest member did not grow, so the order still holds.
  }
  std::vector<int> out(C, -1);
  for (size_t k = 0; k < clusters.size(); ++k)
    for (int i : clusters[k]) out[i] = static_cast<int>(k);
  return out;
}

std::string FormatSuperclassFile(const std::vector<int>& class_to_superclass,
                                 const std::vector<std::string>& class_names,
                                 const std::vector<std::string>& header) {
  const int C = static_cast<int>(class_to_superclass.size());
  auto name = [&](int c) {
    return c < static_cast<int>(class_names.size()) ? class_names[c] : std::to_string(c);
  };
  std::ostringstream os;
  for (const std::string& h : header) os << "# " << h << "\n";
  const int S = C == 0 ? 0 : *std::max_element(class_to_superclass.begin(), class_to_superclass.end()) + 1;
  for (int s = 0; s < S; ++s) {
    os << "# super-class " << s << ":";
    const char* sep = " ";
    for (int c = 0; c < C; ++c)
      if (class_to_superclass[c] == s) {
        os << sep << c << " " << name(c);
        sep = ", ";
      }
    os << "\n";
  }
  os << "# class superclass\n";
  for (int c = 0; c < C; ++c) os << c << " " << class_to_superclass[c] << "\n";
  return os.str();
}

}  // namespace moe
