#include "launcher/comm_model.h"

#include <glog/logging.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "models/moe/capacity.h"

namespace moe {

double AlgBandwidthGBs(int64_t bytes, double seconds) {
  CHECK_GT(seconds, 0) << "AlgBandwidthGBs: time must be positive";
  return static_cast<double>(bytes) / seconds / 1e9;
}

double BusBandwidthGBs(double algbw_gbs, int ranks) {
  CHECK_GE(ranks, 1) << "BusBandwidthGBs: ranks=" << ranks;
  return algbw_gbs * (ranks - 1) / ranks;
}

PeerSplit SplitPeers(int ep, int ranks_per_node) {
  PeerSplit p;
  const int on_node = ranks_per_node > 0 ? std::min(ep, ranks_per_node) : ep;
  p.intra = on_node - 1;
  p.inter = ep - on_node;
  return p;
}

LevelBytes SplitBytes(int64_t bytes, int ep, int ranks_per_node) {
  const PeerSplit p = SplitPeers(ep, ranks_per_node);
  const double per_peer = static_cast<double>(bytes) / ep;
  return {per_peer * p.intra, per_peer * p.inter};
}

double ExchangeSeconds(const LinkModel& m, int64_t bytes, int ep, int ranks_per_node) {
  const PeerSplit p = SplitPeers(ep, ranks_per_node);
  const LevelBytes b = SplitBytes(bytes, ep, ranks_per_node);
  double t = 0;
  if (p.intra > 0) t += m.alpha_intra + m.beta_intra * b.intra;
  if (p.inter > 0) t += m.alpha_inter + m.beta_inter * b.inter;
  return t;
}

bool WeightedLeastSquares(const std::vector<std::vector<double>>& A, const std::vector<double>& b,
                          const std::vector<double>& w, const std::vector<std::string>& names,
                          std::vector<double>* x, std::string* error) {
  const size_t n = names.size();
  // Augmented normal equations [A^T W^2 A | A^T W^2 b].
  std::vector<std::vector<double>> M(n, std::vector<double>(n + 1, 0.0));
  for (size_t i = 0; i < A.size(); ++i) {
    CHECK_EQ(A[i].size(), n) << "WeightedLeastSquares: row " << i << " has the wrong width";
    const double w2 = w[i] * w[i];
    for (size_t r = 0; r < n; ++r) {
      for (size_t c = 0; c < n; ++c) M[r][c] += w2 * A[i][r] * A[i][c];
      M[r][n] += w2 * A[i][r] * b[i];
    }
  }
  double scale = 0;
  for (size_t r = 0; r < n; ++r) scale = std::max(scale, std::fabs(M[r][r]));
  for (size_t col = 0; col < n; ++col) {
    size_t piv = col;
    for (size_t r = col + 1; r < n; ++r)
      if (std::fabs(M[r][col]) > std::fabs(M[piv][col])) piv = r;
    // Relative to the largest diagonal: below this the unknown is not determined by the data.
    if (!(std::fabs(M[piv][col]) > 1e-12 * scale)) {
      *error = "the rows do not determine " + names[col] + " (singular normal equations)";
      return false;
    }
    std::swap(M[col], M[piv]);
    for (size_t r = 0; r < n; ++r) {
      if (r == col) continue;
      const double f = M[r][col] / M[col][col];
      for (size_t c = col; c <= n; ++c) M[r][c] -= f * M[col][c];
    }
  }
  x->assign(n, 0.0);
  for (size_t r = 0; r < n; ++r) (*x)[r] = M[r][n] / M[r][r];
  return true;
}

namespace {

bool AllNonNegative(const std::vector<double>& x) {
  return std::all_of(x.begin(), x.end(), [](double v) { return v >= 0; });
}

// "row 3 (tokens 256, ep 2): transfer_us=-1: must be positive (not measured in this CSV)".
std::string BadTimeError(const SweepRow& r, size_t index, FitTarget target, double us) {
  char buf[160];
  snprintf(buf, sizeof(buf), "row %zu (tokens %lld, ep %d): %s_us=%g: must be positive%s",
           index + 1, static_cast<long long>(r.tokens), r.ep, FitTargetName(target), us,
           us < 0 && target == FitTarget::kTransfer ? " (not measured in this CSV)" : "");
  return buf;
}

double WeightedSquaredResidual(const std::vector<std::vector<double>>& A,
                               const std::vector<double>& b, const std::vector<double>& w,
                               const std::vector<double>& x) {
  double sum = 0;
  for (size_t i = 0; i < A.size(); ++i) {
    double r = -b[i];
    for (size_t j = 0; j < x.size(); ++j) r += A[i][j] * x[j];
    sum += w[i] * w[i] * r * r;
  }
  return sum;
}

// The least-squares solution with only the unknowns in `free_mask` free, the rest 0; false when
// those columns do not determine it.
bool SolveOnSubset(const std::vector<std::vector<double>>& A, const std::vector<double>& b,
                   const std::vector<double>& w, const std::vector<std::string>& names,
                   unsigned free_mask, std::vector<double>* x) {
  std::vector<size_t> cols;
  for (size_t j = 0; j < names.size(); ++j)
    if (free_mask & (1u << j)) cols.push_back(j);
  std::vector<std::vector<double>> sub(A.size());
  std::vector<std::string> sub_names;
  for (size_t j : cols) sub_names.push_back(names[j]);
  for (size_t i = 0; i < A.size(); ++i)
    for (size_t j : cols) sub[i].push_back(A[i][j]);
  std::vector<double> y;
  std::string ignored;
  if (!WeightedLeastSquares(sub, b, w, sub_names, &y, &ignored)) return false;
  x->assign(names.size(), 0.0);
  for (size_t k = 0; k < cols.size(); ++k) (*x)[cols[k]] = y[k];
  return true;
}

}  // namespace

bool NonNegativeLeastSquares(const std::vector<std::vector<double>>& A,
                             const std::vector<double>& b, const std::vector<double>& w,
                             const std::vector<std::string>& names, std::vector<double>* x,
                             std::string* error) {
  if (!WeightedLeastSquares(A, b, w, names, x, error)) return false;
  if (AllNonNegative(*x)) return true;
  CHECK_LE(names.size(), 16u) << "NonNegativeLeastSquares enumerates subsets: too many unknowns";
  double best = -1;
  std::vector<double> candidate;
  const unsigned all = (1u << names.size()) - 1;
  for (unsigned mask = 0; mask < all; ++mask) {  // every proper subset; `all` was tried above
    if (!SolveOnSubset(A, b, w, names, mask, &candidate)) continue;
    if (!AllNonNegative(candidate)) continue;
    const double r = WeightedSquaredResidual(A, b, w, candidate);
    if (best < 0 || r < best) {
      best = r;
      *x = candidate;
    }
  }
  return true;  // mask 0 (everything 0) is always feasible
}

const char* FitTargetName(FitTarget target) {
  return target == FitTarget::kTransfer ? "transfer" : "exchange";
}

double TargetMicros(const SweepRow& row, FitTarget target) {
  return target == FitTarget::kTransfer ? row.transfer_us : row.exchange_us;
}

FitTarget DefaultFitTarget(const std::vector<SweepRow>& rows) {
  for (const SweepRow& r : rows)
    if (r.ep >= 2 && r.transfer_us < 0) return FitTarget::kExchange;
  return FitTarget::kTransfer;
}

bool FitLinkModel(const std::vector<SweepRow>& rows, FitTarget target, LinkModel* model,
                  std::string* error) {
  bool any_inter = false, any_intra = false;
  for (const SweepRow& r : rows) {
    if (r.ep < 2) continue;
    const PeerSplit p = SplitPeers(r.ep, r.ranks_per_node);
    any_inter |= p.inter > 0;
    any_intra |= p.intra > 0;
  }
  std::vector<std::string> names;
  if (any_intra) names = {"alpha_intra", "beta_intra"};
  if (any_inter) names.insert(names.end(), {"alpha_inter", "beta_inter"});
  // Units for conditioning: microseconds and megabytes.
  std::vector<std::vector<double>> A;
  std::vector<double> b, w;
  for (size_t i = 0; i < rows.size(); ++i) {
    const SweepRow& r = rows[i];
    if (r.ep < 2) continue;
    const double us = TargetMicros(r, target);
    if (!(us > 0)) {
      *error = BadTimeError(r, i, target, us);
      return false;
    }
    const PeerSplit p = SplitPeers(r.ep, r.ranks_per_node);
    const LevelBytes lb = SplitBytes(r.bytes, r.ep, r.ranks_per_node);
    std::vector<double> a;
    if (any_intra) a.insert(a.end(), {p.intra > 0 ? 1.0 : 0.0, lb.intra / 1e6});
    if (any_inter) a.insert(a.end(), {p.inter > 0 ? 1.0 : 0.0, lb.inter / 1e6});
    A.push_back(a);
    b.push_back(us);
    w.push_back(1.0 / us);  // relative error
  }
  if (names.empty()) {
    *error = "no row with ep >= 2 to fit";
    return false;
  }
  std::vector<double> x;
  if (!NonNegativeLeastSquares(A, b, w, names, &x, error)) return false;
  *model = LinkModel();
  size_t i = 0;
  if (any_intra) {
    model->alpha_intra = x[i++] * 1e-6;
    model->beta_intra = x[i++] * 1e-12;  // us per MB -> s per byte
  }
  if (any_inter) {
    model->alpha_inter = x[i++] * 1e-6;
    model->beta_inter = x[i++] * 1e-12;
  }
  model->has_inter = any_inter;
  return true;
}

int64_t ExchangeBytes(const LayerShape& s, int bytes_per_element) {
  CHECK(s.group_tokens > 0 && s.tokens % s.group_tokens == 0)
      << s.name << ": tokens=" << s.tokens << " must be a multiple of group_tokens="
      << s.group_tokens;
  const int64_t groups = s.tokens / s.group_tokens;
  const int64_t C = CapacityPerExpert(s.top_k, s.group_tokens, s.capacity, s.experts,
                                      CapacityRounding::kCeil);
  return int64_t{s.experts} * groups * C * s.dim * bytes_per_element;
}

double ExpertFlops(const LayerShape& s) {
  const int64_t rows = ExchangeBytes(s, 1) / s.dim;
  return 12.0 * static_cast<double>(rows) * s.dim * s.hidden;
}

Prediction Predict(const LinkModel& m, const LayerShape& s, int ep, int ranks_per_node,
                   int bytes_per_element, double flops_per_s) {
  Prediction p;
  p.bytes = ExchangeBytes(s, bytes_per_element);
  p.exchange_s = ExchangeSeconds(m, p.bytes, ep, ranks_per_node);
  p.a2a_s = 4 * p.exchange_s;
  p.experts_s = ExpertFlops(s) / flops_per_s;
  p.share = p.a2a_s / (p.a2a_s + p.experts_s);
  return p;
}

}  // namespace moe
