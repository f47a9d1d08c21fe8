// moe_train: trains a vision model of any family (ViT/V-MoE, Mixer/Sparse-MLP, CNN/pMoE, Mobile
// V-MoE, conditional MoE) on Fashion-MNIST with experts sharded over MPI ranks, with checkpoints
// and resume on any layout. Run it under mpirun (launcher/run.sh sets the environment); see
// README.md.
//
// Failure policy: errors every rank can see (config, data files, outputs, checkpoints) are agreed
// on over the world (launcher/job_agreement.h), printed once by the lowest failing rank, and end
// every rank with the same exit code (launcher/exit_codes.h); anything unexpected (a CHECK, a
// dying rank) goes through MPI_Abort, and a rank that stops answering is caught by the
// collective watchdog (comm/collective_watchdog.h), so no rank hangs.
#include <gflags/gflags.h>
#include <glog/logging.h>
#include <mpi.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <iomanip>
#include <memory>
#include <sstream>
#include <utility>

#include "comm/mpi_abort.h"
#include "comm/clock_sync.h"
#include "comm/mpi_communicator.h"
#include "core/gemm.h"
#include "core/host_memory.h"
#include "launcher/checkpoint.h"
#include "launcher/config.h"
#include "launcher/device_comm.h"
#include "launcher/epoch_schedule.h"
#include "launcher/exit_codes.h"
#include "launcher/idx_dataset.h"
#include "launcher/job_agreement.h"
#include "launcher/memory_estimate.h"
#include "launcher/metrics_writer.h"
#include "launcher/output_files.h"
#include "launcher/a2a_profile.h"
#include "launcher/merged_trace.h"
#include "launcher/profile_report.h"
#include "launcher/progress_log.h"
#include "launcher/routing_analytics.h"
#include "launcher/run_summary.h"
#include "launcher/stop_signals.h"
#include "launcher/test_set_eval.h"
#include "launcher/train_loop.h"
#include "launcher/training_session.h"


DEFINE_string(config, "", "TrainConfig in protobuf text format (launcher/configs/*.pbtxt)");
DEFINE_string(override, "", "text-format fields merged over the config, e.g. 'steps: 20'");
DEFINE_int32(steps, 0, "overrides the config's steps (when given, must be >= 1)");
DEFINE_string(metrics_out, "", "JSON-lines file: one object per step and per evaluation (rank 0)");
// --log_dir is glog's own flag: the folder for the per-rank log files (default "logs").
DEFINE_string(trace_dir, "",
              "if set, every rank writes a Chrome trace (Perfetto) here, and rank 0 one merged "
              "trace of every rank on the common clock (trace.merged.json)");
DEFINE_int32(fault_rank, -1, "testing: this rank fails at --fault_step (proves no rank hangs)");
DEFINE_int32(fault_step, -1, "testing: step at which --fault_rank fails");
DEFINE_bool(allow_shared_gpu, false,
            "device \"cuda\" only, testing: let several ranks of one host share a GPU (NCCL over "
            "loopback sockets; slow). Production runs one rank per GPU");
DEFINE_string(analytics_dir, "",
              "if set, rank 0 writes routing heatmaps per MoE layer here (expert x class, "
              "final evaluation): a labelled SVG and a small PNG; the tables are printed either "
              "way");
DEFINE_int32(fault_nan_step, -1, "testing: rank 0's batch is poisoned with NaN at this step");
DEFINE_double(collective_timeout_s, moe::kDefaultCollectiveTimeoutSeconds,
              "a collective (all-to-all, all-reduce, ...) that has not completed after this many "
              "seconds ends the job (exit 5) naming the step, phase and the ranks that did not "
              "answer; 0 turns the watchdog off");
DEFINE_string(checkpoint_dir, "",
              "if set, checkpoints go to DIR/step-NNNNNNNN (shared by all ranks): every "
              "--checkpoint_every steps, at the end of training, at --stop_at_step, and on "
              "SIGTERM/SIGINT/SIGUSR1 (after the current step)");
DEFINE_int32(checkpoint_every, 0, "steps between checkpoints (0: only at the end and on a stop)");
DEFINE_int32(keep_checkpoints, 0, "keep only the newest K checkpoints in --checkpoint_dir (0: all)");
DEFINE_bool(resume, false, "continue from the newest complete checkpoint in --checkpoint_dir");
DEFINE_string(resume_from, "", "continue from this checkpoint (DIR/step-NNNNNNNN), any layout");
DEFINE_int64(stop_at_step, 0,
             "if > 0, stop once this many steps are done (saving a checkpoint when "
             "--checkpoint_dir is set) without the final evaluation; exit 0");
DEFINE_int64(fault_kill_in_checkpoint, -1,
             "testing: rank 0 SIGKILLs itself in the middle of saving this step's checkpoint");

namespace moe {
namespace {

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

// An explicit --steps must be a real step count: --steps=0 and --steps=-5 used to be ignored, and
// the config's steps ran instead.
std::string StepsFlagError() {
  gflags::CommandLineFlagInfo info;
  if (!gflags::GetCommandLineFlagInfo("steps", &info) || info.is_default || FLAGS_steps >= 1)
    return "";
  return "config error: --steps=" + std::to_string(FLAGS_steps) +
         ": must be >= 1 (it replaces the config's steps)";
}

// The flags that are not config fields: collective watchdog and checkpointing.
std::string JobFlagsError() {
  const std::string bad = "config error: --";
  if (!(FLAGS_collective_timeout_s >= 0))
    return bad + "collective_timeout_s=" + std::to_string(FLAGS_collective_timeout_s) +
           ": must be >= 0 seconds (0 turns the collective watchdog off)";
  if (FLAGS_checkpoint_every < 0)
    return bad + "checkpoint_every=" + std::to_string(FLAGS_checkpoint_every) + ": must be >= 0";
  if (FLAGS_keep_checkpoints < 0)
    return bad + "keep_checkpoints=" + std::to_string(FLAGS_keep_checkpoints) + ": must be >= 0";
  if (FLAGS_stop_at_step < 0)
    return bad + "stop_at_step=" + std::to_string(FLAGS_stop_at_step) + ": must be >= 0";
  if (FLAGS_resume && !FLAGS_resume_from.empty())
    return bad + "resume and --resume_from=" + FLAGS_resume_from + ": give one of them";
  if (FLAGS_resume && FLAGS_checkpoint_dir.empty())
    return bad + "resume needs --checkpoint_dir (the folder to resume from)";
  if (FLAGS_checkpoint_every > 0 && FLAGS_checkpoint_dir.empty())
    return bad + "checkpoint_every=" + std::to_string(FLAGS_checkpoint_every) +
           " needs --checkpoint_dir";
  return "";
}

// Every output is proven writable before the run spends any time (config error, exit 2); the
// same outputs are checked again when written (exit 6, or 7 for checkpoints). rank 0 opens the
// metrics file here and keeps it open.
void CheckOutputsUpFront(int rank, MetricsWriter* metrics) {
  std::string error;
  bool ok = FLAGS_trace_dir.empty() || CheckOutputDir("trace_dir", FLAGS_trace_dir, &error);
  if (ok && rank == 0 && !FLAGS_analytics_dir.empty())
    ok = CheckOutputDir("analytics_dir", FLAGS_analytics_dir, &error);
  if (ok && rank == 0 && !FLAGS_checkpoint_dir.empty())
    ok = CheckOutputDir("checkpoint_dir", FLAGS_checkpoint_dir, &error);
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

// Parses, validates and compares the config over the world; checks the flags and outputs.
proto::TrainConfig LoadConfigOrFail(int rank, int world, MetricsWriter* metrics) {
  proto::TrainConfig config;
  std::string error;
  bool ok = !FLAGS_config.empty();
  if (!ok) error = "config error: --config is required (e.g. launcher/configs/vmoe_tiny.pbtxt)";
  if (ok) ok = LoadTrainConfig(FLAGS_config, FLAGS_override, &config, &error);
  FailTogetherIf(!ok, error, kExitConfig);
  // recipe.epochs becomes `steps` before the --steps flag may replace it.
  const std::string schedule_error = ResolveEpochSchedule(&config, world);
  FailTogetherIf(!schedule_error.empty(), schedule_error, kExitConfig);
  const std::string flags_error = StepsFlagError() + JobFlagsError();
  FailTogetherIf(!flags_error.empty(), flags_error, kExitConfig);
  if (FLAGS_steps > 0) config.set_steps(FLAGS_steps);
  ResolveWorldSizeFields(world, &config);
  const std::vector<std::string> problems = ValidateTrainConfig(config, world);
  std::string joined;
  for (const auto& p : problems) joined += (joined.empty() ? "" : "\n") + p;
  FailTogetherIf(!problems.empty(), joined, kExitConfig);
  // Outputs are checked before training, so a typo does not cost a whole run's outputs.
  CheckOutputsUpFront(rank, metrics);
  uint64_t h = ConfigHash(config), hmin = 0, hmax = 0;
  MPI_Allreduce(&h, &hmin, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(&h, &hmax, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
  FailTogetherIf(hmin != hmax && rank == 0,
                 "config error: ranks hold different configs (config hashes differ across the "
                 "world); give every rank the same --config, --override and --steps",
                 kExitConfig);
  CheckMemoryUpFront(config, world);
  return config;
}

// The communicators of the job: MPI always; the device one (NCCL) on the CUDA path, destroyed
// before MPI's.
struct JobComms {
  explicit JobComms(const proto::TrainConfig& config);
  ~JobComms();
  std::unique_ptr<MpiCommunicator> mpi;
  std::unique_ptr<DeviceComm> device_comm;
  Communicator* device = nullptr;  // device_comm's, else nullptr
};

JobComms::JobComms(const proto::TrainConfig& config) {
  const bool on_gpu = config.device() == "cuda";
  if (on_gpu) BindRankToGpu(FLAGS_allow_shared_gpu);  // before any CUDA or NCCL call
  mpi = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, config.parallel().ep_size());
  mpi->set_collective_timeout(FLAGS_collective_timeout_s);
  SetJobWatchdog(&mpi->watchdog());
  if (on_gpu) {
    device_comm = MakeDeviceComm(*mpi);
    device = device_comm->get();
  }
}

JobComms::~JobComms() {
  device_comm.reset();
  SetJobWatchdog(nullptr);
}

// Everything one run works with; built once in Run.
struct Job {
  int rank = 0, world = 1;
  proto::TrainConfig config;
  MpiCommunicator* comm = nullptr;
  TrainingSession* session = nullptr;
  MetricsWriter* metrics = nullptr;
  ImageDataset train, test;
  int64_t batch = 0, global_batch = 0;
  int64_t dense_params = 0;
  double expert_params = 0;  // over the EP group: every expert once
  std::unique_ptr<EpochEvaluations> epoch_evals;  // recipe.eval_every_epoch, else null
};

// Data: every rank reads the files (they are small); failures are agreed on.
void LoadDataOrFail(Job* job) {
  const auto& d = job->config.data();
  std::string error;
  bool ok = LoadIdxDataset(d.train_images(), d.train_labels(), &job->train, &error,
                           d.train_images_limit());
  if (ok) ok = LoadIdxDataset(d.test_images(), d.test_labels(), &job->test, &error);
  FailTogetherIf(!ok, "data error: " + error, kExitData);
  // An epoch of the recipe is EpochImages(config) images; the stream must hold exactly that many.
  const auto& r = job->config.recipe();
  const bool in_epochs = r.epochs() > 0 || r.warmup_epochs() > 0 || r.eval_every_epoch();
  const int64_t want = EpochImages(job->config);
  FailTogetherIf((d.train_images_limit() > 0 || in_epochs) && job->train.count != want,
                 "data error: " + d.train_images() + " holds " + std::to_string(job->train.count) +
                     " images; " +
                     (d.train_images_limit() > 0
                          ? "data.train_images_limit=" + std::to_string(want) + " asks for more"
                          : "the epoch schedule assumes " + std::to_string(want) +
                                " (set data.train_images_limit)"),
                 kExitData);
}

// Every rank's log opens with where it sits in the EP x DP grid; rank 0 adds the model's size.
void LogLayout(Job* job) {
  const MpiCommunicator& comm = *job->comm;
  const int ep = comm.Size(GroupKind::kExpert), ep_rank = comm.Rank(GroupKind::kExpert);
  const auto& model = job->config.model();
  const int per_rank = model.use_moe() ? model.moe().num_experts() / ep : 0;
  LOG(INFO) << "rank " << job->rank << " of " << job->world << ": ep_rank " << ep_rank << " of "
            << ep << ", dp_rank " << comm.Rank(GroupKind::kData) << " of "
            << comm.Size(GroupKind::kData) << ", experts [" << ep_rank * per_rank << ", "
            << (ep_rank + 1) * per_rank << ")";
  int64_t expert_local = 0;
  for (Parameter* p : job->session->Parameters())
    (p->is_expert() ? expert_local : job->dense_params) += p->value.numel();
  job->expert_params = static_cast<double>(expert_local);
  job->comm->AllReduceSum(&job->expert_params, 1, GroupKind::kExpert);
  LOG_IF(INFO, job->rank == 0) << "moe_train: world " << job->world << " = EP " << ep << " x DP "
                               << comm.Size(GroupKind::kData) << ", family " << model.family()
                               << (model.use_moe() ? " (MoE)" : " (dense)") << ", "
                               << job->session->net().moe_layers().size()
                               << " MoE layers, dense params " << job->dense_params
                               << ", expert params " << static_cast<int64_t>(job->expert_params)
                               << ", global batch " << job->global_batch << ", steps "
                               << job->config.steps();
}

// --resume / --resume_from: loads the checkpoint on this rank's layout; returns the first step to
// run (0 without resume). Every refusal ends all ranks with exit 7.
int64_t ResumeIfAsked(Job* job) {
  if (!FLAGS_resume && FLAGS_resume_from.empty()) return 0;
  std::string path = FLAGS_resume_from, error;
  bool ok = !path.empty() || FindNewestCheckpoint(FLAGS_checkpoint_dir, &path, &error);
  FailTogetherIf(!ok, error, kExitCheckpoint);
  proto::CheckpointManifest m;
  const auto start = std::chrono::steady_clock::now();
  ok = LoadCheckpoint(path, job->config, job->session, &m, &error);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  FailTogetherIf(!ok, error, kExitCheckpoint);
  FailTogetherIf(m.step() > job->config.steps(),
                 "checkpoint error: " + path + " is at step " + std::to_string(m.step()) +
                     ", beyond this run's steps: " + std::to_string(job->config.steps()),
                 kExitCheckpoint);
  if (job->rank == 0) {
    const auto& l = m.layout();
    LOG(INFO) << "resuming from " << path << " at step " << m.step() << " (written on EP "
              << l.ep_size() << " x DP " << l.dp_size() << ", now EP "
              << job->comm->Size(GroupKind::kExpert) << " x DP " << job->comm->Size(GroupKind::kData)
              << "); rank 0 read its share in " << std::fixed << std::setprecision(3) << seconds << " s";
    LOG_IF(WARNING, m.global_batch() != job->global_batch)
        << "the checkpoint was written with a global batch of " << m.global_batch() << ", this run has "
        << job->global_batch << ": the data order and the loss scale change from here on";
  }
  return m.step();
}

// Saves the state after `steps_done` steps when --checkpoint_dir is set; a failure ends every
// rank with exit 7 (nothing is lost in silence).
void SaveCheckpointIfAsked(Job* job, int64_t steps_done) {
  if (FLAGS_checkpoint_dir.empty()) return;
  CheckpointSaveStats stats;
  std::string error;
  bool ok = SaveCheckpoint(FLAGS_checkpoint_dir, steps_done, job->config, job->session, job->comm,
                           &stats, &error);
  FailTogetherIf(!ok, error, kExitCheckpoint);
  ok = job->rank != 0 || PruneCheckpoints(FLAGS_checkpoint_dir, FLAGS_keep_checkpoints, &error);
  FailTogetherIf(!ok, error, kExitCheckpoint);
  LOG_IF(INFO, job->rank == 0) << std::fixed << std::setprecision(2) << "checkpoint " << stats.path
                               << " written: " << stats.bytes / 1e6 << " MB in " << stats.seconds
                               << " s (" << stats.bytes / 1e6 / std::max(stats.seconds, 1e-9)
                               << " MB/s)";
}

// Test accuracy: the mean over the task head's evaluation passes, each pass's accuracy logged
// when there are several. Collective.
double Evaluate(Job* job, int64_t at_step, RoutingAnalytics* analytics) {
  const TestSetAccuracy acc = EvaluateTestSet(job->session, job->test,
                                              job->config.data().eval_images(), job->batch,
                                              job->comm, analytics);
  const TaskHead& head = job->session->task_head();
  LOG_IF(INFO, job->rank == 0 && head.NumEvalPasses() > 1)
      << head.EvalPassesTitle() << " at step " << at_step << ": "
      << FormatPassAccuracies(head, acc);
  return acc.mean;
}

// After each step the ranks agree, in one all-reduce, on a failed metrics write (rank 0, exit 6)
// and on a pending graceful stop (a signal some rank got); returns that signal, or 0.
int AgreeAfterStep(Job* job, int64_t step) {
  const int mine = (job->metrics->ok() ? 0 : 1) | (PendingStopSignal() << 1);
  const int all = MaxOverWorld(mine);
  if (all & 1)
    FailTogetherIf(!job->metrics->ok(),
                   "output error: --metrics_out=" + FLAGS_metrics_out + ": " +
                       job->metrics->error() + " (after step " + std::to_string(step) + ")",
                   kExitOutput);
  return all >> 1;
}

// An evaluation that closes `epoch` (recipe.eval_every_epoch): the best so far, the log line and
// the metrics record with the epoch.
void RecordEpochEvaluation(Job* job, int64_t done, int64_t epoch, double acc) {
  job->epoch_evals->Record(epoch, acc);
  job->metrics->WriteEval(done, acc, epoch);
  LOG_IF(INFO, job->rank == 0) << std::fixed << std::setprecision(4) << "epoch " << epoch
                               << ": test_accuracy=" << acc << " (step " << done << ")";
}

enum class LoopEnd { kAllSteps, kStopAtStep, kSignal };

// moe_train's side of the shared step loop (launcher/train_loop.h): fault injection, the
// finite-loss check, metrics and progress lines, periodic evaluations, the stop agreement and
// checkpoints.
class TrainSteps : public StepHooks {
 public:
  TrainSteps(Job* job, int64_t first_step)
      : job_(job),
        progress_(first_step, job->config.steps(), job->global_batch, job->config.log_every()) {}
  void BeforeStep(int64_t step) override;
  void OnGathered(int64_t step, TrainBatch* batch) override;
  bool AfterStep(int64_t step, const StepStats& s) override;

  LoopEnd end() const { return end_; }
  int signal() const { return signal_; }  // the stop signal when the loop ended on one
  double periodic_eval_seconds() const { return periodic_eval_seconds_; }

 private:
  void EvaluateIfDue(int64_t done);
  // Checkpoints when due; true when the loop ends after `done` steps (a signal, --stop_at_step).
  bool StopsAfter(int64_t done);

  Job* job_;
  ProgressLog progress_;
  double periodic_eval_seconds_ = 0;  // left out of the summary's images/s
  int signal_ = 0;
  LoopEnd end_ = LoopEnd::kAllSteps;
};

void TrainSteps::BeforeStep(int64_t step) {
  SetStopSignalStep(step, job_->config.steps());
  if (job_->rank == FLAGS_fault_rank && step == FLAGS_fault_step)
    LOG(FATAL) << "injected failure (--fault_rank=" << job_->rank << " --fault_step=" << step
               << ")";
}

void TrainSteps::OnGathered(int64_t step, TrainBatch* batch) {
  if (job_->rank == 0 && step == FLAGS_fault_nan_step) batch->images.at(0) = std::nanf("");
}

bool TrainSteps::AfterStep(int64_t step, const StepStats& s) {
  // The loss is all-reduced, so every rank sees the same NaN and they stop together.
  FailTogetherIf(!std::isfinite(s.loss) || !std::isfinite(s.aux_loss),
                 "numerics error: loss is not finite at step " + std::to_string(step) +
                     " (cross-entropy " + std::to_string(s.loss) + ", aux " +
                     std::to_string(s.aux_loss) + "); check the input data and learning rate",
                 kExitNumerics);
  job_->metrics->WriteStep(step, s);
  if (job_->rank == 0) progress_.Add(step, s);
  const int64_t done = step + 1;
  EvaluateIfDue(done);
  signal_ = AgreeAfterStep(job_, step);
  return !StopsAfter(done);
}

void TrainSteps::EvaluateIfDue(int64_t done) {
  const proto::TrainConfig& config = job_->config;
  // The last step's evaluation is the final one (Finish), which also closes the last epoch.
  if (done == config.steps()) return;
  const bool periodic = config.eval_every() > 0 && done % config.eval_every() == 0;
  const int64_t epoch = job_->epoch_evals ? job_->epoch_evals->EpochEndingAt(done) : 0;
  if (!periodic && epoch == 0) return;
  const auto start = std::chrono::steady_clock::now();
  const double acc = Evaluate(job_, done, nullptr);
  periodic_eval_seconds_ +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (epoch > 0) RecordEpochEvaluation(job_, done, epoch, acc);
  else job_->metrics->WriteEval(done, acc);
  LOG_IF(INFO, job_->rank == 0 && periodic) << "eval at step " << done << ": test accuracy " << acc;
}

bool TrainSteps::StopsAfter(int64_t done) {
  const bool stop_here = FLAGS_stop_at_step > 0 && done == FLAGS_stop_at_step;
  if (signal_ != 0 || stop_here || done == job_->config.steps() ||
      (FLAGS_checkpoint_every > 0 && done % FLAGS_checkpoint_every == 0))
    SaveCheckpointIfAsked(job_, done);
  if (signal_ != 0) {
    LOG_IF(INFO, job_->rank == 0)
        << "moe_train: stopped by " << StopSignalName(signal_) << " after step " << done << "; "
        << (FLAGS_checkpoint_dir.empty()
                ? "no --checkpoint_dir: nothing saved"
                : "checkpoint " + CheckpointPath(FLAGS_checkpoint_dir, done) + " written");
    end_ = LoopEnd::kSignal;
    return true;
  }
  if (stop_here) {
    LOG_IF(INFO, job_->rank == 0) << "moe_train: stopping after step " << done
                                  << " (--stop_at_step)";
    end_ = LoopEnd::kStopAtStep;
    return true;
  }
  return false;
}

// Each rank's trace and rank 0's merged one (collective); "" or the output error to report.
std::string WriteTraces(Job* job, const Profiler& profiler) {
  if (FLAGS_trace_dir.empty()) return "";
  std::string error;
  const std::string own = FLAGS_trace_dir + "/trace.rank" + std::to_string(job->rank) + ".json";
  bool ok = profiler.WriteChromeTrace(own, job->rank, &error);
  std::string merged_error;
  if (!WriteMergedTrace(profiler, job->comm, FLAGS_trace_dir + "/trace.merged.json",
                        &merged_error)) {
    error += (ok ? "" : "; ") + merged_error;
    ok = false;
  }
  return ok ? "" : "output error: --trace_dir=" + FLAGS_trace_dir + ": " + error;
}

// The run's summary line and JSON object (launcher/run_summary.h).
RunSummary MakeSummary(const Job& job, double acc, double train_seconds,
                       double periodic_eval_seconds, const AllToAllProfile& a2a) {
  const proto::TrainConfig& config = job.config;
  RunSummary sum;
  sum.family = config.model().family();
  sum.model = ModelNameFromConfigPath(FLAGS_config);
  sum.dense_params = job.dense_params;
  sum.expert_params = static_cast<int64_t>(job.expert_params);
  sum.flops_per_image = job.session->net().FlopsPerImage();
  const double pure_train_seconds = train_seconds - periodic_eval_seconds;
  sum.images_per_s =
      pure_train_seconds > 0 ? config.steps() * job.global_batch / pure_train_seconds : 0;
  sum.train_wall_s = train_seconds;
  sum.steps = config.steps();
  sum.global_batch = job.global_batch;
  sum.world = job.world;
  sum.test_accuracy = acc;
  if (job.epoch_evals && job.epoch_evals->any()) {
    sum.best_test_accuracy = job.epoch_evals->best_accuracy();
    sum.best_epoch = job.epoch_evals->best_epoch();
  }
  sum.all_to_alls = a2a.rows;
  sum.ep_size = a2a.ep_size;
  sum.straggler_rank = a2a.straggler_rank;
  sum.straggler_fraction = a2a.straggler_fraction;
  return sum;
}

// Final evaluation, profile, traces, heatmaps, summary; returns the exit code.
int Finish(Job* job, const Profiler& profiler, double train_seconds, double periodic_eval_seconds) {
  SetStopSignalPhase(StopPhase::kFinishing);
  const proto::TrainConfig& config = job->config;
  // Routing analytics read the host routing state, which the CUDA path does not keep.
  std::unique_ptr<RoutingAnalytics> analytics;
  const auto& moe_layers = job->session->net().moe_layers();
  if (!moe_layers.empty() && job->session->on_device())
    LOG_IF(INFO, job->rank == 0) << "routing analytics: skipped (host path only; device is cuda)";
  else if (!moe_layers.empty())  // data-set classes, over every evaluation pass
    analytics = std::make_unique<RoutingAnalytics>(moe_layers, config.model().num_classes());
  const double acc = Evaluate(job, config.steps(), analytics.get());
  if (analytics) analytics->Reduce(job->comm);
  const int64_t last_epoch =
      job->epoch_evals ? job->epoch_evals->EpochEndingAt(config.steps()) : 0;
  if (last_epoch > 0) RecordEpochEvaluation(job, config.steps(), last_epoch, acc);
  else job->metrics->WriteEval(config.steps(), acc);
  const std::string table = FormatProfileAcrossRanks(profiler, config.steps(), job->comm);
  const AllToAllProfile a2a = ProfileAllToAlls(profiler, config.steps(), job->comm);
  // Each rank's trace, rank 0's heatmaps and metrics; any failure ends every rank with exit
  // code 6 after the rest has been written.
  std::string output_error = WriteTraces(job, profiler);
  if (job->rank == 0) {
    LOG(INFO) << "communication profile (per training step, over " << job->world << " ranks):\n" << table;
    LOG_IF(INFO, !a2a.text.empty()) << "all-to-all profile (per training step, mean over "
                                    << job->world << " ranks):\n" << a2a.text;
    const int64_t n = config.data().eval_images();
    LOG(INFO) << std::fixed << std::setprecision(4) << "final: test accuracy " << acc << " on "
              << (n > 0 ? std::min<int64_t>(n, job->test.count) : job->test.count)
              << " test images after " << config.steps() << " steps; training wall time "
              << std::setprecision(1) << train_seconds << " s";
    std::string png_error;
    if (analytics && !ReportRoutingAnalytics(*analytics, FLAGS_analytics_dir, job->metrics, &png_error))
      output_error += (output_error.empty() ? "" : "\n") +
                      ("output error: --analytics_dir=" + FLAGS_analytics_dir + ": " + png_error);
    const RunSummary sum = MakeSummary(*job, acc, train_seconds, periodic_eval_seconds, a2a);
    LOG(INFO) << FormatSummaryLine(sum);
    job->metrics->WriteObject(SummaryJson(sum));
    if (!job->metrics->Close())
      output_error += (output_error.empty() ? "" : "\n") +
                      ("output error: --metrics_out=" + FLAGS_metrics_out + ": " + job->metrics->error());
  }
  FailTogetherIf(!output_error.empty(), output_error, kExitOutput);
  return kExitOk;
}

// Closes rank 0's metrics file on an early stop (a signal, --stop_at_step), checking the close.
int EndEarly(Job* job, int exit_code) {
  const bool ok = job->rank != 0 || job->metrics->Close();
  FailTogetherIf(!ok, "output error: --metrics_out=" + FLAGS_metrics_out + ": " + job->metrics->error(),
                 kExitOutput);
  google::FlushLogFiles(google::GLOG_INFO);
  return exit_code;
}

// BLAS threads from OPENBLAS_NUM_THREADS / OMP_NUM_THREADS (else 1); a bad value is a config
// error on every rank.
void SetBlasThreadsOrFail(int rank) {
  const BlasThreadChoice blas = SetBlasThreadsFromEnv();
  FailTogetherIf(blas.threads == 0, "config error: " + blas.error, kExitConfig);
  LOG_IF(INFO, rank == 0) << "BLAS threads per rank: " << blas.threads << " (" << blas.source
                          << ")";
  LOG_IF(INFO, rank == 0) << "BLAS kernels: " << BlasCoreNote();
  std::string error;
  LOG_IF(WARNING, !KeepFreedHostMemory(&error))
      << "host memory: freed buffers go back to the OS every step (" << error << ")";
}

// This rank's view of the training image stream.
TrainStream TrainStreamOf(const Job& job) {
  TrainStream stream;
  stream.data = &job.train;
  stream.stream_images = job.train.count;
  stream.seed = job.config.seed();
  stream.rank = job.rank;
  stream.batch_per_rank = job.batch;
  stream.augment = AugmentOptionsFromConfig(job.config);
  return stream;
}

int Run(char** argv) {
  Job job;
  MPI_Comm_rank(MPI_COMM_WORLD, &job.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &job.world);
  SetJobProgramName("moe_train");
  // The log folder is checked before glog opens files in it (glog would print "COULD NOT CREATE
  // LOGFILE" on every rank and train on).
  if (FLAGS_log_dir.empty()) FLAGS_log_dir = "logs";
  std::string log_dir_error;
  const bool log_dir_ok = CheckOutputDir("log_dir", FLAGS_log_dir, &log_dir_error);
  SetUpLogging(argv[0], job.rank, log_dir_ok);
  InstallMpiAbortOnFatal();
  InstallStopSignalHandlers("moe_train", job.rank);
  // A metrics pipe whose reader went away must be an output error (EPIPE, exit 6), not a rank
  // killed by SIGPIPE without a word.
  signal(SIGPIPE, SIG_IGN);
  FailTogetherIf(!log_dir_ok, log_dir_error, kExitConfig);
  SetBlasThreadsOrFail(job.rank);

  MetricsWriter metrics;
  job.metrics = &metrics;
  job.config = LoadConfigOrFail(job.rank, job.world, &metrics);
  SetGracefulStop(!FLAGS_checkpoint_dir.empty());
  SetCheckpointKillForTesting(FLAGS_fault_kill_in_checkpoint);
  JobComms comms(job.config);
  job.comm = comms.mpi.get();
  LoadDataOrFail(&job);
  Profiler profiler;
  // The common clock for the all-to-all skew split and the merged trace (a few ping-pongs).
  const ClockOffset clock = SyncClockToRoot(job.comm->comm(GroupKind::kWorld));
  profiler.set_common_clock(clock.offset_us, clock.error_us);
  TrainingSession session(job.config, job.comm, &profiler, comms.device);
  job.session = &session;
  job.batch = job.config.data().batch_per_rank();
  job.global_batch = session.global_batch();
  if (job.config.recipe().eval_every_epoch())
    job.epoch_evals = std::make_unique<EpochEvaluations>(job.train.count, job.global_batch);
  LogLayout(&job);
  const int64_t first_step = ResumeIfAsked(&job);

  const auto start = std::chrono::steady_clock::now();
  TrainSteps steps(&job, first_step);
  RunTrainLoop(&session, TrainStreamOf(job), first_step, job.config.steps(), &steps);
  if (steps.end() == LoopEnd::kSignal) return EndEarly(&job, kExitSignalBase + steps.signal());
  if (steps.end() == LoopEnd::kStopAtStep) return EndEarly(&job, kExitOk);
  const double train_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const int rc = Finish(&job, profiler, train_seconds, steps.periodic_eval_seconds());
  google::FlushLogFiles(google::GLOG_INFO);
  return rc;
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  gflags::SetUsageMessage("moe_train --config=FILE [--steps=N] [--override='field: value']");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  MPI_Init(&argc, &argv);
  const int rc = moe::Run(argv);
  MPI_Finalize();
  return rc;
}
