// moe_train: trains a vision model of any family (ViT/V-MoE, Mixer/Sparse-MLP, CNN/pMoE, Mobile
// V-MoE, conditional MoE) on Fashion-MNIST with experts sharded over MPI
// ranks. Run it under mpirun (launcher/run.sh sets the environment); see README.md.
//
// Failure policy: errors every rank can see (config, data files) are agreed on with an
// all-reduce, printed once by the lowest failing rank, and end every rank with the same exit
// code; anything unexpected (a CHECK, a dying rank) goes through MPI_Abort so no rank hangs.
#include <gflags/gflags.h>
#include <glog/logging.h>
#include <mpi.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <memory>
#include <sstream>
#include <utility>

#include "comm/mpi_abort.h"
#include "comm/mpi_communicator.h"
#include "core/gemm.h"
#include "launcher/batch_sampler.h"
#include "launcher/config.h"
#include "launcher/exit_codes.h"
#include "launcher/idx_dataset.h"
#include "launcher/memory_estimate.h"
#include "launcher/metrics_writer.h"
#include "launcher/multitask.h"
#include "launcher/output_files.h"
#include "launcher/profile_report.h"
#include "launcher/routing_analytics.h"
#include "launcher/run_summary.h"
#include "launcher/stop_signals.h"
#include "launcher/training_session.h"

#ifdef MOE_EP_HAS_CUDA
#include <cuda_runtime_api.h>

#include "comm/nccl/nccl_communicator.h"
#include "core/kernels/cuda/cuda_check.h"
#endif

DEFINE_string(config, "", "TrainConfig in protobuf text format (launcher/configs/*.pbtxt)");
DEFINE_string(override, "", "text-format fields merged over the config, e.g. 'steps: 20'");
DEFINE_int32(steps, 0, "overrides the config's steps (when given, must be >= 1)");
DEFINE_string(metrics_out, "", "JSON-lines file: one object per step and per evaluation (rank 0)");
// --log_dir is glog's own flag: the folder for the per-rank log files (default "logs").
DEFINE_string(trace_dir, "", "if set, every rank writes a Chrome trace (Perfetto) here");
DEFINE_int32(fault_rank, -1, "testing: this rank fails at --fault_step (proves no rank hangs)");
DEFINE_int32(fault_step, -1, "testing: step at which --fault_rank fails");
DEFINE_bool(allow_shared_gpu, false,
            "device \"cuda\" only, testing: let several ranks of one host share a GPU (NCCL over "
            "loopback sockets; slow). Production runs one rank per GPU");
DEFINE_string(analytics_dir, "",
              "if set, rank 0 writes a routing heatmap PNG per MoE layer here (expert x class, "
              "final evaluation); the tables are printed either way");
DEFINE_int32(fault_nan_step, -1, "testing: rank 0's batch is poisoned with NaN at this step");

namespace moe {
namespace {

// All ranks learn whether any rank failed; the lowest failing rank prints its message; all exit
// with `code`. Returns only when nobody failed.
void FailTogetherIf(bool failed, const std::string& message, int code) {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  int first_failing = failed ? rank : INT32_MAX;
  int lowest = INT32_MAX;
  MPI_Allreduce(&first_failing, &lowest, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (lowest == INT32_MAX) return;
  if (rank == lowest) {
    fprintf(stderr, "moe_train: rank %d: %s\n", rank, message.c_str());
    fflush(stderr);
    FLAGS_alsologtostderr = false;  // already printed once, plainly; the log file gets it too
    FLAGS_stderrthreshold = google::GLOG_FATAL;
    LOG(ERROR) << message;
  }
  google::FlushLogFiles(google::GLOG_INFO);
  MPI_Barrier(MPI_COMM_WORLD);
  MPI_Finalize();
  std::exit(code);
}

// With log_files false (an unusable --log_dir, reported right after) no log file is opened, so
// glog does not print "COULD NOT CREATE LOGFILE" on every rank.
void SetUpLogging(const char* argv0, int rank, bool log_files) {
  const std::string base = FLAGS_log_dir + "/moe_train.rank" + std::to_string(rank) + ".";
  google::SetLogDestination(google::GLOG_INFO, log_files ? base.c_str() : "");
  for (auto sev : {google::GLOG_WARNING, google::GLOG_ERROR, google::GLOG_FATAL})
    google::SetLogDestination(sev, "");  // one file per rank, not one per severity
  FLAGS_alsologtostderr = rank == 0;
  FLAGS_stderrthreshold = rank == 0 ? google::GLOG_INFO : google::GLOG_ERROR;
  FLAGS_logbufsecs = 0;
  google::InitGoogleLogging(argv0);
}

std::string FormatSeconds(double s) {
  std::ostringstream os;
  const int64_t t = static_cast<int64_t>(s + 0.5);
  if (t >= 3600) os << t / 3600 << "h";
  if (t >= 60) os << std::setw(t >= 3600 ? 2 : 1) << std::setfill('0') << (t / 60) % 60 << "m";
  os << std::setw(t >= 60 ? 2 : 1) << std::setfill('0') << t % 60 << "s";
  return os.str();
}

// An explicit --steps must be a real step count: --steps=0 and --steps=-5 used to be ignored, and
// the config's steps ran instead.
std::string StepsFlagError() {
  gflags::CommandLineFlagInfo info;
  if (!gflags::GetCommandLineFlagInfo("steps", &info) || info.is_default || FLAGS_steps >= 1)
    return "";
  return "config error: --steps=" + std::to_string(FLAGS_steps) +
         ": must be >= 1 (it replaces the config's steps)";
}

// Every output is proven writable before the run spends any time (config error, exit 2); the
// same outputs are checked again when written (output error, exit 6). rank 0 opens the metrics
// file here and keeps it open.
void CheckOutputsUpFront(int rank, MetricsWriter* metrics) {
  std::string error;
  bool ok = FLAGS_trace_dir.empty() || CheckOutputDir("trace_dir", FLAGS_trace_dir, &error);
  if (ok && rank == 0 && !FLAGS_analytics_dir.empty())
    ok = CheckOutputDir("analytics_dir", FLAGS_analytics_dir, &error);
  if (ok && rank == 0 && !metrics->Open(FLAGS_metrics_out, &error)) {
    ok = false;
    error = "config error: --metrics_out=" + FLAGS_metrics_out + ": " + error;
  }
  FailTogetherIf(!ok, error, kExitConfig);
}

// Ranks on this host share its memory, so the per-rank estimate is compared with their share.
int RanksOnThisHost() {
  MPI_Comm local;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local);
  int n = 1;
  MPI_Comm_size(local, &n);
  MPI_Comm_free(&local);
  return n;
}

// A config that cannot fit (capacity_factor_train: 1e9, num_experts: 100000) is refused here in
// a second, naming the field, instead of failing an allocation minutes later without one.
// Host memory only: on the CUDA path the parameters and buffers live on the GPU.
void CheckMemoryUpFront(const proto::TrainConfig& config, int world) {
  if (config.device() != "cpu") return;
  const std::string error =
      CheckMemoryFits(config, world, RanksOnThisHost(), AvailableHostMemoryBytes());
  FailTogetherIf(!error.empty(), error, kExitConfig);
}

// rank 0 writes the metrics; every rank learns of a failed write and ends with exit code 6.
void FailOnMetricsError(const MetricsWriter& metrics) {
  FailTogetherIf(!metrics.ok(),
                 "output error: --metrics_out=" + FLAGS_metrics_out + ": " + metrics.error(),
                 kExitOutput);
}

// Copies the rows `idx` of the data set into a [n, pixels] batch and a label vector.
void GatherBatch(const ImageDataset& d, const std::vector<int64_t>& idx, Tensor* images,
                 std::vector<int>* labels) {
  const int64_t px = static_cast<int64_t>(d.rows) * d.cols;
  *images = Tensor({static_cast<int64_t>(idx.size()), px});
  labels->resize(idx.size());
  for (size_t i = 0; i < idx.size(); ++i) {
    std::copy(d.pixels.begin() + idx[i] * px, d.pixels.begin() + (idx[i] + 1) * px,
              images->data() + i * px);
    (*labels)[i] = d.labels[idx[i]];
  }
}

// Evaluates on the test set split across the world; every rank runs the same number of
// batches (padded with valid=0 rows) so the MoE all-to-alls stay matched. With `analytics`,
// every batch's kept routing assignments are counted per expert and class (this rank's share).
double EvaluateTestSet(TrainingSession* session, const ImageDataset& test, int64_t eval_images,
                       int64_t batch, Communicator* comm, RoutingAnalytics* analytics = nullptr) {
  const int world = comm->Size(GroupKind::kWorld), rank = comm->Rank(GroupKind::kWorld);
  const int64_t n = eval_images > 0 ? std::min<int64_t>(eval_images, test.count) : test.count;
  const int64_t per_round = batch * world;
  const int64_t rounds = (n + per_round - 1) / per_round;
  int64_t correct = 0;
  double loss = 0;
  std::vector<int64_t> idx(batch);
  Tensor images;
  std::vector<int> labels;
  for (int64_t r = 0; r < rounds; ++r) {
    const int64_t first = r * per_round + rank * batch;
    const int64_t valid = std::max<int64_t>(0, std::min<int64_t>(batch, n - first));
    for (int64_t i = 0; i < batch; ++i) idx[i] = i < valid ? first + i : 0;  // pad with image 0
    GatherBatch(test, idx, &images, &labels);
    int64_t c = 0;
    double l = 0;
    session->Evaluate(images, labels, valid, &c, &l);
    if (analytics != nullptr) analytics->ObserveNet(session->net().moe_layers(), labels, valid);
    correct += c;
    loss += l;
  }
  double sums[2] = {static_cast<double>(correct), loss};
  comm->AllReduceSum(sums, 2, GroupKind::kWorld);
  return sums[0] / n;
}

int Run(int argc, char** argv) {
  int rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  // The log folder is checked before glog opens files in it (glog would print "COULD NOT CREATE
  // LOGFILE" on every rank and train on).
  if (FLAGS_log_dir.empty()) FLAGS_log_dir = "logs";
  std::string log_dir_error;
  const bool log_dir_ok = CheckOutputDir("log_dir", FLAGS_log_dir, &log_dir_error);
  SetUpLogging(argv[0], rank, log_dir_ok);
  InstallMpiAbortOnFatal();
  InstallStopSignalHandlers("moe_train", rank);
  // A metrics pipe whose reader went away must be an output error (EPIPE, exit 6), not a rank
  // killed by SIGPIPE without a word.
  signal(SIGPIPE, SIG_IGN);
  FailTogetherIf(!log_dir_ok, log_dir_error, kExitConfig);
  SetBlasThreads(1);

  // 1. Config: parse, validate, and check every rank holds the same one.
  proto::TrainConfig config;
  std::string error;
  bool ok = !FLAGS_config.empty();
  if (!ok) error = "config error: --config is required (e.g. launcher/configs/vmoe_tiny.pbtxt)";
  if (ok) ok = LoadTrainConfig(FLAGS_config, FLAGS_override, &config, &error);
  FailTogetherIf(!ok, error, kExitConfig);
  const std::string steps_error = StepsFlagError();
  FailTogetherIf(!steps_error.empty(), steps_error, kExitConfig);
  if (FLAGS_steps > 0) config.set_steps(FLAGS_steps);
  const std::vector<std::string> problems = ValidateTrainConfig(config, world);
  std::string joined;
  for (const auto& p : problems) joined += (joined.empty() ? "" : "\n") + p;
  FailTogetherIf(!problems.empty(), joined, kExitConfig);
  // Outputs are checked before training, so a typo does not cost a whole run's outputs.
  MetricsWriter metrics;
  CheckOutputsUpFront(rank, &metrics);
  uint64_t h = ConfigHash(config), hmin = 0, hmax = 0;
  MPI_Allreduce(&h, &hmin, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(&h, &hmax, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
  FailTogetherIf(hmin != hmax && rank == 0,
                 "config error: ranks hold different configs (config hashes differ across the "
                 "world); give every rank the same --config, --override and --steps",
                 kExitConfig);
  CheckMemoryUpFront(config, world);

  // 1b. Device: bind this rank to its GPU before any CUDA or NCCL call (a LOG(FATAL) there, e.g.
  // no GPU, ends every rank through MPI_Abort).
  const bool on_gpu = config.device() == "cuda";
#ifdef MOE_EP_HAS_CUDA
  if (on_gpu) {
    const DeviceBinding bind = BindDeviceForRank(MPI_COMM_WORLD, FLAGS_allow_shared_gpu);
    LOG(INFO) << "rank " << rank << ": device cuda:" << bind.device << " (local rank "
              << bind.local_rank << " of " << bind.local_size << " on this host"
              << (bind.shared_gpu ? ", GPU shared with other ranks: testing only" : "") << ")";
  }
#endif

  MpiCommunicator comm(MPI_COMM_WORLD, config.parallel().ep_size());
  Communicator* device_comm = nullptr;
#ifdef MOE_EP_HAS_CUDA
  // Blocking stream (cudaStreamCreate, not NonBlocking): the layers run on the legacy default
  // stream, which then orders itself against the NCCL work implicitly (training_session.h).
  struct StreamHolder {  // declared before `nccl`, so destroyed after it
    cudaStream_t s = nullptr;
    ~StreamHolder() {
      if (s != nullptr) cudaStreamDestroy(s);
    }
  } nccl_stream;
  std::unique_ptr<NcclCommunicator> nccl;
  if (on_gpu) {
    CUDA_CHECK(cudaStreamCreate(&nccl_stream.s));
    nccl = std::make_unique<NcclCommunicator>(comm, nccl_stream.s);
    device_comm = nccl.get();
    LOG_IF(INFO, rank == 0) << "moe_train: NCCL communicators ready (world, expert, data)";
  }
#else
  (void)on_gpu;  // ValidateTrainConfig refuses "cuda" in a build without the CUDA path
#endif
  {
    // Every rank's log file opens with where it sits in the EP x DP grid.
    const int ep = comm.Size(GroupKind::kExpert), ep_rank = comm.Rank(GroupKind::kExpert);
    const int per_rank = config.model().use_moe() ? config.model().moe().num_experts() / ep : 0;
    LOG(INFO) << "rank " << rank << " of " << world << ": ep_rank " << ep_rank << " of " << ep
              << ", dp_rank " << comm.Rank(GroupKind::kData) << " of " << comm.Size(GroupKind::kData)
              << ", experts [" << ep_rank * per_rank << ", " << (ep_rank + 1) * per_rank << ")";
  }
  const auto& d = config.data();

  // 2. Data: every rank reads the files (they are small); failures are agreed on.
  ImageDataset train, test;
  ok = LoadIdxDataset(d.train_images(), d.train_labels(), &train, &error);
  if (ok) ok = LoadIdxDataset(d.test_images(), d.test_labels(), &test, &error);
  FailTogetherIf(!ok, "data error: " + error, kExitData);

  Profiler profiler;
  TrainingSession session(config, &comm, &profiler, device_comm);
  BatchSampler sampler(train.count, config.seed());
  const int64_t b = d.batch_per_rank(), gb = session.global_batch();
  // Family "conditional": multi-task Fashion-MNIST (launcher/multitask.h).
  const bool multi_task = IsMultiTask(config);
  MultiTaskSpec multitask;
  if (multi_task) ok = BuildMultiTaskSpec(config, &multitask, &error);
  FailTogetherIf(multi_task && !ok, "config error: " + error, kExitConfig);
  std::vector<int> tasks, modalities;
  // Multi-task evaluation: every (task, modality) pair on the test set; returns their mean.
  auto evaluate_multi_task = [&](int64_t at_step, RoutingAnalytics* analytics) {
    const MultiTaskAccuracy mt =
        EvaluateMultiTask(&session, test, multitask, d.eval_images(), b, &comm, analytics);
    LOG_IF(INFO, rank == 0) << "multi-task test accuracy at step " << at_step << ": " << mt.ToString();
    return mt.Mean();
  };
  int64_t num_params = 0, num_expert_params_local = 0;
  for (Parameter* p : session.Parameters())
    (p->is_expert() ? num_expert_params_local : num_params) += p->value.numel();
  double expert_params = static_cast<double>(num_expert_params_local);
  comm.AllReduceSum(&expert_params, 1, GroupKind::kExpert);
  LOG_IF(INFO, rank == 0) << "moe_train: world " << world << " = EP " << comm.Size(GroupKind::kExpert)
                          << " x DP " << comm.Size(GroupKind::kData) << ", family "
                          << config.model().family() << (config.model().use_moe() ? " (MoE)" : " (dense)")
                          << ", "
                          << session.net().moe_layers().size() << " MoE layers, dense params "
                          << num_params << ", expert params " << static_cast<int64_t>(expert_params)
                          << ", global batch " << gb << ", steps " << config.steps();

  const auto t0 = std::chrono::steady_clock::now();
  auto seconds_since = [](std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  };
  Tensor images;
  std::vector<int> labels;
  double window_loss = 0, window_acc = 0, window_drop = 0;
  int window = 0;
  auto window_start = std::chrono::steady_clock::now();
  double periodic_eval_seconds = 0;  // left out of the summary's images/s
  for (int64_t step = 0; step < config.steps(); ++step) {
    SetStopSignalStep(step, config.steps());
    if (rank == FLAGS_fault_rank && step == FLAGS_fault_step)
      LOG(FATAL) << "injected failure (--fault_rank=" << rank << " --fault_step=" << step << ")";
    GatherBatch(train, sampler.Slice(step, gb, static_cast<int64_t>(rank) * b, b), &images, &labels);
    if (rank == 0 && step == FLAGS_fault_nan_step) images.at(0) = std::nanf("");
    if (multi_task)
      MakeMultiTaskBatch(multitask, train.rows, train.cols, step * gb + static_cast<int64_t>(rank) * b,
                         &images, &labels, &tasks, &modalities);
    const StepStats s = multi_task ? session.TrainStep(step, images, labels, &tasks, &modalities)
                                   : session.TrainStep(step, images, labels);
    // The loss is all-reduced, so every rank sees the same NaN and they stop together.
    FailTogetherIf(!std::isfinite(s.loss) || !std::isfinite(s.aux_loss),
                   "numerics error: loss is not finite at step " + std::to_string(step) +
                       " (cross-entropy " + std::to_string(s.loss) + ", aux " +
                       std::to_string(s.aux_loss) + "); check the input data and learning rate",
                   kExitNumerics);
    metrics.WriteStep(step, s);
    window_loss += s.loss;
    window_acc += s.accuracy;
    window_drop += s.dropped_fraction;
    ++window;
    const bool last = step + 1 == config.steps();
    if (rank == 0 && ((step + 1) % std::max(1, config.log_every()) == 0 || last)) {
      const double dt = seconds_since(window_start);
      const double elapsed = seconds_since(t0);
      const double eta = elapsed / (step + 1) * (config.steps() - step - 1);
      LOG(INFO) << "step " << step + 1 << "/" << config.steps() << std::fixed << std::setprecision(4)
                << "  loss " << window_loss / window << "  aux " << s.aux_loss
                << "  acc " << std::setprecision(3) << window_acc / window << "  img/s "
                << std::setprecision(1) << window * gb / dt << "  dropped "
                << std::setprecision(3) << window_drop / window << "  lr " << std::setprecision(5)
                << s.learning_rate
                << (s.superclass_accuracy >= 0  // Mobile V-MoE: router hits its super-class
                        ? "  sc-acc " + std::to_string(s.superclass_accuracy).substr(0, 5)
                        : std::string())
                << "  ETA " << FormatSeconds(eta);
      window_loss = window_acc = window_drop = 0;
      window = 0;
      window_start = std::chrono::steady_clock::now();
    }
    if (config.eval_every() > 0 && (step + 1) % config.eval_every() == 0 && !last) {
      const auto eval_start = std::chrono::steady_clock::now();
      const double acc = multi_task ? evaluate_multi_task(step + 1, nullptr)
                                    : EvaluateTestSet(&session, test, d.eval_images(), b, &comm);
      periodic_eval_seconds += seconds_since(eval_start);
      metrics.WriteEval(step + 1, acc);
      LOG_IF(INFO, rank == 0) << "eval at step " << step + 1 << ": test accuracy " << acc;
    }
    FailOnMetricsError(metrics);
  }
  SetStopSignalPhase(StopPhase::kFinishing);
  const double train_seconds = seconds_since(t0);
  // Routing analytics read the host routing state, which the CUDA path does not keep.
  std::unique_ptr<RoutingAnalytics> analytics;
  const auto& moe_layers = session.net().moe_layers();
  if (!moe_layers.empty() && on_gpu)
    LOG_IF(INFO, rank == 0) << "routing analytics: skipped (host path only; device is cuda)";
  else if (!moe_layers.empty())  // multi-task: fine classes over every (task, modality) pass
    analytics = std::make_unique<RoutingAnalytics>(moe_layers, config.model().num_classes());
  const double acc = multi_task ? evaluate_multi_task(config.steps(), analytics.get())
                                : EvaluateTestSet(&session, test, d.eval_images(), b, &comm, analytics.get());
  if (analytics) analytics->Reduce(&comm);
  metrics.WriteEval(config.steps(), acc);

  const std::string table = FormatProfileAcrossRanks(profiler, config.steps(), &comm);
  // Final outputs: each rank's trace, rank 0's heatmaps and metrics; any failure ends every rank
  // with exit code 6 after the rest has been written.
  std::string output_error;
  if (!FLAGS_trace_dir.empty() &&
      !profiler.WriteChromeTrace(FLAGS_trace_dir + "/trace.rank" + std::to_string(rank) + ".json",
                                 rank, &output_error))
    output_error = "output error: --trace_dir=" + FLAGS_trace_dir + ": " + output_error;
  if (rank == 0) {
    LOG(INFO) << "communication profile (per training step, over " << world << " ranks):\n" << table;
    LOG(INFO) << std::fixed << std::setprecision(4) << "final: test accuracy " << acc << " on "
              << (d.eval_images() > 0 ? std::min<int64_t>(d.eval_images(), test.count) : test.count)
              << " test images after " << config.steps() << " steps; training wall time "
              << std::setprecision(1) << train_seconds << " s";
    std::string png_error;
    if (analytics && !ReportRoutingAnalytics(*analytics, FLAGS_analytics_dir, &metrics, &png_error))
      output_error += (output_error.empty() ? "" : "\n") + ("output error: --analytics_dir=" +
                                                            FLAGS_analytics_dir + ": " + png_error);
    RunSummary sum;
    sum.family = config.model().family();
    sum.model = ModelNameFromConfigPath(FLAGS_config);
    sum.dense_params = num_params;
    sum.expert_params = static_cast<int64_t>(expert_params);
    sum.flops_per_image = session.net().FlopsPerImage();
    const double pure_train_seconds = train_seconds - periodic_eval_seconds;
    sum.images_per_s = pure_train_seconds > 0 ? config.steps() * gb / pure_train_seconds : 0;
    sum.train_wall_s = train_seconds;
    sum.steps = config.steps();
    sum.global_batch = gb;
    sum.world = world;
    sum.test_accuracy = acc;
    LOG(INFO) << FormatSummaryLine(sum);
    metrics.WriteObject(SummaryJson(sum));
    if (!metrics.Close())
      output_error += (output_error.empty() ? "" : "\n") +
                      ("output error: --metrics_out=" + FLAGS_metrics_out + ": " + metrics.error());
  }
  FailTogetherIf(!output_error.empty(), output_error, kExitOutput);
  google::FlushLogFiles(google::GLOG_INFO);
  return kExitOk;
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  gflags::SetUsageMessage("moe_train --config=FILE [--steps=N] [--override='field: value']");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  MPI_Init(&argc, &argv);
  const int rc = moe::Run(argc, argv);
  MPI_Finalize();
  return rc;
}
