// Super-classes from confusion, for Mobile V-MoE's router guidance on a data set that has none
// (models/moe/README.md, "Per-image routing with super-class guidance"): the dense model's
// confusions on held-out images make a symmetric weighted graph, clustered into E groups.
//
//   counts[i][j]  held-out images of class i predicted as j
//   W[i][j]       counts[i][j] / n_i + counts[j][i] / n_j  (i != j; W[i][i] = 0), n_i = images of
//                 class i: the two confusion RATES, so a frequent class does not pull the others
//                 towards it only because it has more images
//   clusters      greedy agglomerative merging by average linkage: start from singletons and
//                 merge, while more than E clusters remain, the pair (A, B) with the largest
//                 link(A, B) = sum_{i in A, j in B} W[i][j] / (|A| |B|). Ties go to the pair
//                 with the smaller ids, so the result is deterministic. Average linkage (not
//                 single) keeps one chain of weak confusions from gluing everything together;
//                 it needs no random start (unlike spectral clustering's k-means step).
// Cluster ids are ordered by their smallest class, so class 0 is always in super-class 0.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moe {

// [C * C] row-major counts (row = true class, column = prediction).
std::vector<int64_t> CountConfusions(const std::vector<int>& labels,
                                     const std::vector<int>& predictions, int num_classes);

// [C * C] symmetric confusion graph with a zero diagonal (see above); a class with no images
// contributes rate 0.
std::vector<double> ConfusionGraph(const std::vector<int64_t>& counts, int num_classes);

// Super-class id per class, in [0, num_clusters) (num_clusters <= C; every id used).
std::vector<int> AverageLinkageClusters(const std::vector<double>& graph, int num_classes,
                                        int num_clusters);

// The super-class file (models/nets/mobile_vmoe.h): `header` lines become '#' comments, then one
// comment per super-class naming its classes (class_names may be empty: numbers are used), then
// one "class superclass" line per class.
std::string FormatSuperclassFile(const std::vector<int>& class_to_superclass,
                                 const std::vector<std::string>& class_names,
                                 const std::vector<std::string>& header);

}  // namespace moe
