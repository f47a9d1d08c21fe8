// superclass_tool: makes a Mobile V-MoE super-class file for a data set that has none
// (models/moe/README.md, "Per-image routing with super-class guidance"; the method is in
// launcher/confusion_clustering.h).
//
//   1. trains the DENSE model of --config (e.g. launcher/configs/vit_tiny.pbtxt) for --steps on
//      the first --train_count training images, one process or under mpirun (the step loop
//      moe_train runs, launcher/train_loop.h);
//   2. predicts the held-out training images that follow (the test set stays untouched, so the
//      super-classes never see the data the models are scored on);
//   3. builds the confusion matrix and graph, clusters it into --num_superclasses groups by
//      average linkage, and writes --out (rank 0).
//
//   mpirun -np 4 build/launcher/superclass_tool --config=launcher/configs/vit_tiny.pbtxt
//       --steps=600 --num_superclasses=4 --out=launcher/superclasses/fashion_mnist_E4.txt
#include <gflags/gflags.h>
#include <glog/logging.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <iomanip>
#include <sstream>

#include "comm/mpi_abort.h"
#include "comm/mpi_communicator.h"
#include "core/gemm.h"
#include "launcher/config.h"
#include "launcher/confusion_clustering.h"
#include "launcher/exit_codes.h"
#include "launcher/idx_dataset.h"
#include "launcher/job_agreement.h"
#include "launcher/output_files.h"
#include "launcher/routing_analytics.h"
#include "launcher/test_set_eval.h"
#include "launcher/train_loop.h"
#include "launcher/training_session.h"
#include "models/nets/net_factory.h"

DEFINE_string(config, "launcher/configs/vit_tiny.pbtxt", "the dense model's TrainConfig (text format)");
DEFINE_string(override, "", "text-format fields merged over the config");
DEFINE_int32(steps, 600, "training steps of the dense model");
DEFINE_int32(num_superclasses, 4, "E: groups to cluster the classes into (= the experts)");
DEFINE_int64(train_count, 50000, "the first N training images train the dense model");
DEFINE_int64(heldout_count, 10000, "the next N training images are predicted for the confusions");
DEFINE_string(out, "", "the super-class file to write (rank 0)");
DEFINE_string(class_names, "",
              "comma-separated class names for the file's comments (default: Fashion-MNIST's, "
              "the names the routing heatmaps use)");

namespace moe {
namespace {

std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, sep);) out.push_back(item);
  return out;
}

// The config with --steps, every problem with it and the flags agreed on over the world
// (config error, exit 2).
proto::TrainConfig LoadConfigOrFail(int rank, int world) {
  proto::TrainConfig config;
  std::string error;
  const bool ok = LoadTrainConfig(FLAGS_config, FLAGS_override, &config, &error);
  FailTogetherIf(!ok, error, kExitConfig);
  config.set_steps(FLAGS_steps);
  ResolveWorldSizeFields(world, &config);
  std::vector<std::string> problems = ValidateTrainConfig(config, world);
  // The method clusters a DENSE model's confusions: an MoE model would need routing contexts
  // and, for Mobile V-MoE, the very super-classes this tool makes.
  if (config.model().use_moe())
    problems.push_back("config error: model.use_moe=true: the super-class tool trains the dense "
                       "model (e.g. launcher/configs/vit_tiny.pbtxt)");
  // Confusions are between the classes of one softmax over every logit.
  else if (problems.empty() && CreateTaskHead(config)->NumEvalPasses() != 1)
    problems.push_back("config error: model.family=\"" + config.model().family() +
                       "\": the super-class tool trains a single-task model (e.g. "
                       "launcher/configs/vit_tiny.pbtxt)");
  const int C = config.model().num_classes(), E = FLAGS_num_superclasses;
  if (E < 1 || E > C)
    problems.push_back("flag error: --num_superclasses=" + std::to_string(E) + ": must be in [1, " +
                       std::to_string(C) + "]");
  if (FLAGS_out.empty()) problems.push_back("flag error: --out is required");
  // The file is written after minutes of training: prove now that it can be (without touching
  // an existing one).
  else if (rank == 0 && !CheckOutputFile("out", FLAGS_out, &error)) problems.push_back(error);
  std::string joined;
  for (const auto& p : problems) joined += (joined.empty() ? "" : "\n") + p;
  FailTogetherIf(!problems.empty(), joined, kExitConfig);
  return config;
}

// The training images, which must hold --train_count + --heldout_count (data error, exit 3).
ImageDataset LoadTrainImagesOrFail(const proto::DataConfig& d) {
  ImageDataset train;
  std::string error;
  bool ok = LoadIdxDataset(d.train_images(), d.train_labels(), &train, &error);
  if (ok && FLAGS_train_count + FLAGS_heldout_count > train.count) {
    ok = false;
    error = "--train_count + --heldout_count exceed the " + std::to_string(train.count) +
            " training images";
  }
  FailTogetherIf(!ok, "data error: " + error, kExitData);
  FailTogetherIf(FLAGS_train_count <= 0 || FLAGS_heldout_count <= 0,
                 "flag error: --train_count=" + std::to_string(FLAGS_train_count) +
                     ", --heldout_count=" + std::to_string(FLAGS_heldout_count) +
                     ": both must be > 0",
                 kExitConfig);
  return train;
}

// Rank 0's line every log_every steps: the mean loss over the steps since the last line.
class DenseTrainingLog : public StepHooks {
 public:
  DenseTrainingLog(int rank, int64_t steps, int log_every)
      : rank_(rank), steps_(steps), log_every_(std::max(1, log_every)) {}
  bool AfterStep(int64_t step, const StepStats& stats) override {
    window_loss_ += stats.loss;
    ++window_;
    if (rank_ == 0 && ((step + 1) % log_every_ == 0 || step + 1 == steps_)) {
      LOG(INFO) << "dense step " << step + 1 << "/" << steps_ << "  loss "
                << window_loss_ / window_;
      window_loss_ = 0;
      window_ = 0;
    }
    return true;
  }

 private:
  int rank_;
  int64_t steps_;
  int log_every_;
  double window_loss_ = 0;
  int window_ = 0;
};

// 1. Trains the dense model on the first train_count images (the sampler never leaves them);
// returns the seconds it took.
double TrainDenseModel(TrainingSession* session, const proto::TrainConfig& config,
                       const ImageDataset& train, int rank) {
  TrainStream stream;
  stream.data = &train;
  stream.stream_images = FLAGS_train_count;
  stream.seed = config.seed();
  stream.rank = rank;
  stream.batch_per_rank = config.data().batch_per_rank();
  DenseTrainingLog log(rank, config.steps(), config.log_every());
  const auto t0 = std::chrono::steady_clock::now();
  RunTrainLoop(session, stream, 0, config.steps(), &log);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// 2. Predicts the held-out images, each rank a contiguous share; returns the confusion counts
// [C * C] (row: true class) summed over the world.
std::vector<int64_t> CountHeldoutConfusions(TrainingSession* session, const ImageDataset& train,
                                            int64_t b, int C, MpiCommunicator* comm) {
  const int rank = comm->Rank(GroupKind::kWorld), world = comm->Size(GroupKind::kWorld);
  const int64_t first = FLAGS_train_count, n = FLAGS_heldout_count;
  const int64_t per_rank = (n + world - 1) / world;
  const int64_t lo = std::min(n, rank * per_rank), hi = std::min(n, lo + per_rank);
  std::vector<int> truth, predicted, labels;
  Tensor images;
  for (int64_t at = lo; at < hi; at += b) {
    std::vector<int64_t> idx;
    for (int64_t i = at; i < std::min(hi, at + b); ++i) idx.push_back(first + i);
    GatherBatch(train, idx, &images, &labels);
    const Tensor logits = session->net().Forward(images);  // dense: no routing context needed
    for (size_t i = 0; i < idx.size(); ++i) {
      const float* row = logits.data() + i * C;
      predicted.push_back(static_cast<int>(std::max_element(row, row + C) - row));
      truth.push_back(labels[i]);
    }
  }
  const std::vector<int64_t> local = CountConfusions(truth, predicted, C);
  std::vector<double> summed(local.begin(), local.end());
  comm->AllReduceSum(summed.data(), static_cast<int64_t>(summed.size()), GroupKind::kWorld);
  return std::vector<int64_t>(summed.begin(), summed.end());
}

// 3. Clusters the confusion graph into --num_superclasses groups and writes --out (rank 0);
// returns false with *error when the file cannot be written.
bool WriteSuperclasses(const proto::TrainConfig& config, const std::vector<int64_t>& counts,
                       int world, int64_t global_batch, double seconds, std::string* error) {
  const int C = config.model().num_classes(), E = FLAGS_num_superclasses;
  const std::vector<int> super = AverageLinkageClusters(ConfusionGraph(counts, C), C, E);
  const int64_t first = FLAGS_train_count, n = FLAGS_heldout_count;
  int64_t correct = 0;
  for (int c = 0; c < C; ++c) correct += counts[c * C + c];
  const double acc = static_cast<double>(correct) / n;
  std::ostringstream table;
  table << "confusion matrix (rows: true class, columns: prediction) on " << n
        << " held-out images:\n";
  for (int i = 0; i < C; ++i) {
    for (int j = 0; j < C; ++j) table << std::setw(6) << counts[i * C + j];
    table << "\n";
  }
  LOG(INFO) << table.str();
  std::vector<std::string> header = {
      "Mobile V-MoE super-classes (class -> expert), made by launcher/superclass_tool:",
      "dense model " + FLAGS_config + " (" + config.model().family() + ", " +
          std::to_string(config.steps()) + " steps, global batch " + std::to_string(global_batch) +
          ", " + std::to_string(world) + " ranks, seed " + std::to_string(config.seed()) +
          ") trained on",
      "training images [0, " + std::to_string(first) +
          "); confusions on held-out training images [" + std::to_string(first) + ", " +
          std::to_string(first + n) + "), held-out accuracy " + std::to_string(acc) + ";",
      "graph W_ij = C_ij/n_i + C_ji/n_j; " + std::to_string(E) +
          " groups by greedy average-linkage merging (launcher/confusion_clustering.h)."};
  std::vector<std::string> names = Split(FLAGS_class_names, ',');
  if (FLAGS_class_names.empty())
    for (int c = 0; c < config.model().num_classes(); ++c) names.push_back(FashionMnistClassName(c));
  const std::string text = FormatSuperclassFile(super, names, header);
  const bool ok = WriteWholeFile(FLAGS_out, text, error);
  LOG_IF(INFO, ok) << "dense training " << std::fixed << std::setprecision(1) << seconds
                   << " s, held-out accuracy " << std::setprecision(4) << acc << "; wrote "
                   << FLAGS_out << ":\n" << text;
  return ok;
}

int Run() {
  int rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  SetJobProgramName("superclass_tool");
  const BlasThreadChoice blas = SetBlasThreadsFromEnv();
  FailTogetherIf(blas.threads == 0, "config error: " + blas.error, kExitConfig);
  LOG_IF(INFO, rank == 0) << "BLAS threads per rank: " << blas.threads << " (" << blas.source
                          << ")";
  LOG_IF(INFO, rank == 0) << "BLAS kernels: " << BlasCoreNote();
  const proto::TrainConfig config = LoadConfigOrFail(rank, world);
  const ImageDataset train = LoadTrainImagesOrFail(config.data());

  MpiCommunicator comm(MPI_COMM_WORLD, config.parallel().ep_size());
  SetJobWatchdog(&comm.watchdog());
  TrainingSession session(config, &comm, /*profiler=*/nullptr);
  const double seconds = TrainDenseModel(&session, config, train, rank);
  const std::vector<int64_t> counts =
      CountHeldoutConfusions(&session, train, config.data().batch_per_rank(),
                             config.model().num_classes(), &comm);
  std::string error;
  const bool ok = rank != 0 ||
                  WriteSuperclasses(config, counts, world, session.global_batch(), seconds, &error);
  FailTogetherIf(rank == 0 && !ok, "output error: --out=" + FLAGS_out + ": " + error, kExitOutput);
  return kExitOk;
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  gflags::SetUsageMessage(
      "superclass_tool --config=DENSE.pbtxt --steps=N --num_superclasses=E --out=FILE");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  FLAGS_logtostderr = true;
  if (rank != 0) FLAGS_minloglevel = google::GLOG_WARNING;
  google::InitGoogleLogging(argv[0]);
  moe::InstallMpiAbortOnFatal();
  // --out on a pipe whose reader left must be an output error (EPIPE), not a silent SIGPIPE.
  signal(SIGPIPE, SIG_IGN);
  const int rc = moe::Run();
  MPI_Finalize();
  return rc;
}
