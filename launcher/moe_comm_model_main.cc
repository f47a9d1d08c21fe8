// moe_comm_model: fits the alpha-beta model of the MoE exchange (launcher/comm_model.h) to
// moe_comm_bench CSVs, validates it on held-out rows, and projects it to 8-GPU H100 nodes.
//
//   moe_comm_model --csv=one_node.csv,two_nodes.csv [--holdout_every=4]
//   moe_comm_model --project
//   moe_comm_model [--csv=FILES] --predict --tokens=6272 --dim=768 ... --ep=64
//
// --csv: fits on every row and prints alpha and beta per level (intra-node; inter-node when a row
// has peers on other nodes), then refits without every Nth row (--holdout_every) and prints the
// relative error of each held-out row's predicted time, and their median and max. --fit chooses
// the time: the transfer part of each exchange (the link's cost; default where the CSVs have it)
// or the whole exchange, waiting for late ranks included.
// --project: the projection tables (launcher/comm_projection.h) for vmoe_tiny (read from its
// config) and a V-MoE-B-sized layer, EP 8 to 256.
// --predict: the exchange time and share of one layer shape (--tokens, --dim, ...): with the model
// fitted to --csv (then --bytes_per_element=4, as the CPU path sends floats), or else with the
// projection's link figures.
#include <gflags/gflags.h>
#include <glog/logging.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "launcher/comm_projection.h"
#include "launcher/config.h"
#include "launcher/exit_codes.h"

DEFINE_string(csv, "", "moe_comm_bench CSV files to fit, comma-separated");
// 4, not 3: a default sweep's rows cycle through 3 token counts, so every 3rd row would always
// hold out the largest exchanges.
DEFINE_int32(holdout_every, 4, "hold out every Nth row (N >= 2) for validation");
DEFINE_string(fit, "auto", "the time the model explains: transfer (the exchange less the wait "
              "for the EP group's last rank), exchange (all of it), or auto (transfer where every "
              "row has it)");
DEFINE_bool(project, false, "print the projection for 8-GPU H100 nodes");
DEFINE_string(vmoe_tiny_config, "launcher/configs/vmoe_tiny.pbtxt", "vmoe_tiny's TrainConfig");
DEFINE_double(nvlink_gbs, 450, "projection: NVLink GB/s per GPU per direction");
DEFINE_double(ib_gbs, 50, "projection: InfiniBand GB/s per GPU per direction");
DEFINE_double(alpha_intra_us, 5, "projection: latency of an exchange inside a node, us");
DEFINE_double(alpha_inter_us, 15, "projection: latency of an exchange across nodes, us");
DEFINE_double(tflops, 400, "projection: sustained expert GEMM TFLOP/s per GPU");
DEFINE_bool(predict, false, "predict one layer (the flags below) with the fitted model (--csv) "
            "or, without --csv, the projection's link figures");
DEFINE_int64(tokens, 6272, "--predict: tokens per rank per step");
DEFINE_int64(group_tokens, 1568, "--predict: tokens per routing group");
DEFINE_int32(dim, 768, "--predict: D");
DEFINE_int32(hidden, 3072, "--predict: expert hidden width H");
DEFINE_int32(experts, 32, "--predict: E");
DEFINE_int32(top_k, 2, "--predict: k");
DEFINE_double(capacity, 1.05, "--predict: capacity factor");
DEFINE_int32(ep, 16, "--predict: EP size");
DEFINE_int32(ranks_per_node, 8, "--predict: ranks per node");
DEFINE_int32(bytes_per_element, 2, "--predict: bytes per activation element (the CPU path: 4)");

namespace moe {
namespace {

std::vector<SweepRow> ReadAll(const std::string& list) {
  std::vector<SweepRow> rows;
  std::stringstream ss(list);
  std::string path, err;
  while (std::getline(ss, path, ',')) {
    if (!ReadSweepCsv(path, &rows, &err)) {
      fprintf(stderr, "data error: %s\n", err.c_str());
      exit(kExitData);
    }
  }
  return rows;
}

FitTarget ChosenTarget(const std::vector<SweepRow>& rows) {
  if (FLAGS_fit == "auto") {
    const FitTarget t = DefaultFitTarget(rows);
    if (t == FitTarget::kExchange)
      printf("# note: a row has no transfer_us (a CSV from an older moe_comm_bench): the model "
             "explains the whole exchange, waiting for late ranks included\n");
    return t;
  }
  if (FLAGS_fit == "transfer") return FitTarget::kTransfer;
  if (FLAGS_fit == "exchange") return FitTarget::kExchange;
  fprintf(stderr, "config error: --fit=%s: must be auto, transfer or exchange\n",
          FLAGS_fit.c_str());
  exit(kExitConfig);
}

LinkModel FitOrDie(const std::vector<SweepRow>& rows, FitTarget target, const char* what) {
  LinkModel m;
  std::string err;
  if (!FitLinkModel(rows, target, &m, &err)) {
    fprintf(stderr, "data error: fitting %s: %s\n", what, err.c_str());
    exit(kExitData);
  }
  return m;
}

void PrintModel(const LinkModel& m, size_t rows, FitTarget target) {
  printf("# fit of the %s time on %zu rows (weighted least squares on relative error)\n",
         FitTargetName(target), rows);
  printf("%-12s %12s %14s %14s\n", "level", "alpha_us", "beta_ns_per_KB", "1/beta_GB/s");
  auto level = [](const char* name, double a, double b) {
    printf("%-12s %12.2f %14.3f %14.4f\n", name, 1e6 * a, 1e12 * b, b > 0 ? 1e-9 / b : 0.0);
  };
  level("intra-node", m.alpha_intra, m.beta_intra);
  if (m.has_inter) level("inter-node", m.alpha_inter, m.beta_inter);
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Fits without every --holdout_every-th row and returns the held-out rows' relative errors;
// `table` prints the refit and one line per held-out row.
std::vector<double> HeldOutErrors(const std::vector<SweepRow>& rows, FitTarget target,
                                  bool table) {
  std::vector<SweepRow> fit, held;
  for (size_t i = 0; i < rows.size(); ++i)
    (i % FLAGS_holdout_every == static_cast<size_t>(FLAGS_holdout_every - 1) ? held : fit)
        .push_back(rows[i]);
  const LinkModel m = FitOrDie(fit, target, "the rows kept for fitting");
  if (table) {
    printf("\n# held-out validation: fit on %zu rows, predict rows i with i %% %d == %d (%zu "
           "rows)\n", fit.size(), FLAGS_holdout_every, FLAGS_holdout_every - 1, held.size());
    PrintModel(m, fit.size(), target);
    printf("%-12s %6s %5s %3s %4s %5s %11s | %11s %11s %8s\n", "dispatcher", "tokens", "D",
           "ep", "rpn", "nodes", "bytes", "measured_us", "model_us", "rel_err");
  }
  std::vector<double> errs;
  for (const SweepRow& r : held) {
    if (r.ep < 2) continue;
    const double model_us = 1e6 * ExchangeSeconds(m, r.bytes, r.ep, r.ranks_per_node);
    const double measured_us = TargetMicros(r, target);
    errs.push_back(std::fabs(model_us - measured_us) / measured_us);
    if (!table) continue;
    printf("%-12s %6lld %5d %3d %4d %5d %11lld | %11.1f %11.1f %7.1f%%\n", r.dispatcher.c_str(),
           static_cast<long long>(r.tokens), r.dim, r.ep, r.ranks_per_node, r.nodes,
           static_cast<long long>(r.bytes), measured_us, model_us, 100 * errs.back());
  }
  return errs;
}

void PrintErrorSummary(const char* what, const std::vector<double>& errs) {
  if (errs.empty()) return;
  printf("%s: median %.1f%%, max %.1f%% over %zu rows\n", what, 100 * Median(errs),
         100 * *std::max_element(errs.begin(), errs.end()), errs.size());
}

// The held-out error of the chosen fit, row by row; where the rows allow the other fit too, its
// summary beside it, so that a user sees which time the model explains better on their machine.
void Validate(const std::vector<SweepRow>& rows, FitTarget target) {
  PrintErrorSummary("held-out relative error", HeldOutErrors(rows, target, /*table=*/true));
  if (DefaultFitTarget(rows) != FitTarget::kTransfer) return;  // no transfer times: no other
  const FitTarget other =
      target == FitTarget::kTransfer ? FitTarget::kExchange : FitTarget::kTransfer;
  const std::string what =
      std::string("the same with a fit of the ") + FitTargetName(other) + " time";
  PrintErrorSummary(what.c_str(), HeldOutErrors(rows, other, /*table=*/false));
}

LayerShape VmoeTinyShape() {
  proto::TrainConfig c;
  std::string err;
  if (!LoadTrainConfig(FLAGS_vmoe_tiny_config, "", &c, &err)) {
    fprintf(stderr, "config error: --vmoe_tiny_config=%s: %s\n", FLAGS_vmoe_tiny_config.c_str(),
            err.c_str());
    exit(kExitConfig);
  }
  const auto& m = c.model();
  const int64_t per_image = (m.image_size() / m.patch_size()) * (m.image_size() / m.patch_size());
  LayerShape s;
  s.name = "vmoe_tiny (" + FLAGS_vmoe_tiny_config + ")";
  s.tokens = per_image * c.data().batch_per_rank();
  s.group_tokens = per_image * m.moe().group_size_images();
  s.dim = m.hidden_dim();
  s.hidden = m.moe().expert_hidden_dim() > 0 ? m.moe().expert_hidden_dim() : m.mlp_dim();
  s.experts = m.moe().num_experts();
  s.top_k = m.moe().top_k();
  s.capacity = m.moe().capacity_factor_train();
  return s;
}

// V-MoE-B/16-sized layer: 196 tokens per 224x224 image, batch 32 per GPU, routing groups of 8
// images as in this code (the capacity factor 1.05 is V-MoE's training value).
LayerShape VmoeBShape() {
  LayerShape s;
  s.name = "V-MoE-B-sized layer";
  s.tokens = 196 * 32;
  s.group_tokens = 196 * 8;
  s.dim = 768;
  s.hidden = 3072;
  s.experts = 32;
  s.top_k = 2;
  s.capacity = 1.05;
  return s;
}

ClusterFigures FiguresFromFlags() {
  ClusterFigures c;
  c.nvlink_gbs = FLAGS_nvlink_gbs;
  c.ib_gbs = FLAGS_ib_gbs;
  c.alpha_intra_us = FLAGS_alpha_intra_us;
  c.alpha_inter_us = FLAGS_alpha_inter_us;
  c.flops_per_s = FLAGS_tflops * 1e12;
  return c;
}

// Every --predict field in range, or a config error naming the first that is not.
void CheckPredictFlags() {
  const std::pair<const char*, double> positive[] = {
      {"tokens", FLAGS_tokens}, {"group_tokens", FLAGS_group_tokens}, {"dim", FLAGS_dim},
      {"hidden", FLAGS_hidden}, {"experts", FLAGS_experts}, {"top_k", FLAGS_top_k},
      {"capacity", FLAGS_capacity}, {"ep", FLAGS_ep}, {"ranks_per_node", FLAGS_ranks_per_node},
      {"bytes_per_element", FLAGS_bytes_per_element}, {"tflops", FLAGS_tflops}};
  for (const auto& [name, value] : positive) {
    if (!(value > 0)) {
      fprintf(stderr, "config error: --%s=%g: must be positive\n", name, value);
      exit(kExitConfig);
    }
  }
  if (FLAGS_tokens % FLAGS_group_tokens != 0 || FLAGS_experts % FLAGS_ep != 0) {
    fprintf(stderr, "config error: --tokens=%lld must be a multiple of --group_tokens=%lld and "
            "--ep=%d must divide --experts=%d\n", static_cast<long long>(FLAGS_tokens),
            static_cast<long long>(FLAGS_group_tokens), FLAGS_ep, FLAGS_experts);
    exit(kExitConfig);
  }
}

void PredictOne(const LinkModel& m, const char* source) {
  CheckPredictFlags();
  LayerShape s{"--predict", FLAGS_tokens, FLAGS_group_tokens, FLAGS_dim, FLAGS_hidden,
               FLAGS_experts, FLAGS_top_k, FLAGS_capacity};
  const Prediction p = Predict(m, s, FLAGS_ep, FLAGS_ranks_per_node, FLAGS_bytes_per_element,
                               FLAGS_tflops * 1e12);
  printf("# prediction (%s): tokens=%lld D=%d H=%d E=%d k=%d cf=%.2f ep=%d ranks_per_node=%d\n",
         source, static_cast<long long>(s.tokens), s.dim, s.hidden, s.experts, s.top_k,
         s.capacity, FLAGS_ep, FLAGS_ranks_per_node);
  printf("bytes/exchange %lld  exchange %.1f us  a2a %.4f ms  experts %.4f ms  share %.1f%%\n",
         static_cast<long long>(p.bytes), 1e6 * p.exchange_s, 1e3 * p.a2a_s, 1e3 * p.experts_s,
         100 * p.share);
}

void Project() {
  const ClusterFigures c = FiguresFromFlags();
  const std::vector<int> eps = {8, 16, 32, 64, 128, 256};
  printf("%s\n%s\n%s", ProjectionAssumptions(c).c_str(),
         ProjectionTable(VmoeTinyShape(), c, eps).c_str(),
         ProjectionTable(VmoeBShape(), c, eps).c_str());
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  gflags::SetUsageMessage("moe_comm_model [--csv=FILES] [--project] [--predict ...]");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  google::InitGoogleLogging(argv[0]);
  FLAGS_logtostderr = true;
  if (FLAGS_csv.empty() && !FLAGS_project && !FLAGS_predict) {
    fprintf(stderr, "config error: give --csv=FILES to fit, --project or --predict\n");
    return moe::kExitConfig;
  }
  if (FLAGS_holdout_every < 2) {
    fprintf(stderr, "config error: --holdout_every=%d: must be >= 2\n", FLAGS_holdout_every);
    return moe::kExitConfig;
  }
  if (!FLAGS_csv.empty()) {
    const std::vector<moe::SweepRow> rows = moe::ReadAll(FLAGS_csv);
    const moe::FitTarget target = moe::ChosenTarget(rows);
    const moe::LinkModel fitted = moe::FitOrDie(rows, target, "all rows");
    moe::PrintModel(fitted, rows.size(), target);
    moe::Validate(rows, target);
    if (FLAGS_predict)
      moe::PredictOne(fitted, target == moe::FitTarget::kTransfer
                                  ? "model of the transfer time fitted to --csv"
                                  : "model of the exchange time fitted to --csv");
  } else if (FLAGS_predict) {
    moe::PredictOne(moe::LinkModelOf(moe::FiguresFromFlags()), "projection link figures");
  }
  if (FLAGS_project) {
    if (!FLAGS_csv.empty()) printf("\n");
    moe::Project();
  }
  return moe::kExitOk;
}
