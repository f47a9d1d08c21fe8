// An alpha-beta model of the MoE layer's all-to-all: one exchange costs a latency (alpha) plus
// bytes times an inverse bandwidth (beta), per level of the machine (inside a node, between
// nodes). Bandwidth conventions follow nccl-tests' all-to-all: algbw = bytes one rank sends /
// time, busbw = algbw * (n - 1) / n. The fit is weighted least squares on relative error
// (timings span orders of magnitude, and a model of small exchanges matters as much as of large
// ones), solved by hand through the normal equations.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "launcher/comm_sweep_csv.h"

namespace moe {

// GB/s (1e9 bytes per second) for `bytes` sent in `seconds`.
double AlgBandwidthGBs(int64_t bytes, double seconds);
// nccl-tests' bus bandwidth of an all-to-all over `ranks` ranks.
double BusBandwidthGBs(double algbw_gbs, int ranks);

// How many EP peers of a rank share its node, and how many sit on other nodes, for an EP group
// of `ep` consecutive world ranks placed `ranks_per_node` to a node (node-aligned groups: ep
// divides ranks_per_node or ranks_per_node divides ep).
struct PeerSplit {
  int intra = 0, inter = 0;
};
PeerSplit SplitPeers(int ep, int ranks_per_node);
// The bytes one rank sends to peers on its node and to other nodes, out of `bytes` spread evenly
// over all ep ranks (its own block goes to neither: it is a local copy).
struct LevelBytes {
  double intra = 0, inter = 0;
};
LevelBytes SplitBytes(int64_t bytes, int ep, int ranks_per_node);

// t(exchange) = [intra peers] (alpha_intra + beta_intra * bytes_intra)
//             + [inter peers] (alpha_inter + beta_inter * bytes_inter); seconds and bytes.
struct LinkModel {
  double alpha_intra = 0, beta_intra = 0, alpha_inter = 0, beta_inter = 0;
  bool has_inter = false;  // the fit saw rows with peers on other nodes
};
double ExchangeSeconds(const LinkModel& m, int64_t bytes, int ep, int ranks_per_node);

// Least squares x minimising sum_i w_i^2 (A_i x - b_i)^2 through the normal equations (Gaussian
// elimination, partial pivoting). false with *error naming the unknown when they are singular.
bool WeightedLeastSquares(const std::vector<std::vector<double>>& A, const std::vector<double>& b,
                          const std::vector<double>& w, const std::vector<std::string>& names,
                          std::vector<double>* x, std::string* error);
// Which time a fit explains: the whole exchange as a step sees it (waiting for a late rank
// included), or only its transfer part, the link's cost (waiting is load imbalance or a slow
// rank, not the network: with ranks sharing cores it can be most of the exchange).
enum class FitTarget { kExchange, kTransfer };
const char* FitTargetName(FitTarget target);  // "exchange", "transfer"
// The row's time for `target` in microseconds; -1 when the row did not measure it.
double TargetMicros(const SweepRow& row, FitTarget target);
// kTransfer when every row with ep >= 2 measured its transfer time, else kExchange.
FitTarget DefaultFitTarget(const std::vector<SweepRow>& rows);

// The same with every unknown >= 0 (a latency or an inverse bandwidth below zero means nothing,
// and predicts negative times for small or large exchanges): the unconstrained solution where it
// is non-negative, else the best over the subsets of unknowns held at 0 (at most 2^4 here), which
// is the constrained optimum. Fails, as WeightedLeastSquares does, when the rows do not determine
// the unknowns.
bool NonNegativeLeastSquares(const std::vector<std::vector<double>>& A,
                             const std::vector<double>& b, const std::vector<double>& w,
                             const std::vector<std::string>& names, std::vector<double>* x,
                             std::string* error);

// Fits the rows' `target` time against (bytes, ep, ranks_per_node), every alpha and beta >= 0
// (NonNegativeLeastSquares); the inter level only when some row has inter-node peers. Rows with
// ep == 1 move nothing between ranks and are left out; a row whose time is not positive (or not
// measured) is an error naming the row and the column.
bool FitLinkModel(const std::vector<SweepRow>& rows, FitTarget target, LinkModel* model,
                  std::string* error);

// A layer's shape for prediction.
struct LayerShape {
  std::string name;
  int64_t tokens = 0;        // per rank per step
  int64_t group_tokens = 0;  // tokens per routing group
  int dim = 0, hidden = 0, experts = 0, top_k = 0;
  double capacity = 0;
};
// Bytes one rank sends per exchange: E * groups * C rows of D elements (capacity buffers).
int64_t ExchangeBytes(const LayerShape& s, int bytes_per_element);
// Expert FLOPs of one rank per forward+backward: 12 * rows * D * H (fc1 and fc2 forward, two
// GEMMs each backward) for the E * groups * C rows the rank's experts receive.
double ExpertFlops(const LayerShape& s);

struct Prediction {
  int64_t bytes = 0;
  double exchange_s = 0, a2a_s = 0, experts_s = 0, share = 0;
};
// The 4 exchanges of one forward+backward and their share of (exchanges + expert compute at
// `flops_per_s`).
Prediction Predict(const LinkModel& m, const LayerShape& s, int ep, int ranks_per_node,
                   int bytes_per_element, double flops_per_s);

}  // namespace moe
