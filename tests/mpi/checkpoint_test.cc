// Checkpoints (launcher/checkpoint.h) on 4 real MPI ranks: a resumed run continues bit for bit
// on the same layout; a checkpoint written on EP=4 loads on EP=2 x DP=2 and on one rank with the
// same tensors; every refusal names what is wrong; incomplete checkpoints are never picked.
#include <gtest/gtest.h>
#include <mpi.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "launcher/checkpoint.h"
#include "launcher/checkpoint_files.h"
#include "tests/mpi/ep_invariance_util.h"

namespace moe {
namespace {

using ep_invariance::Batch;
using ep_invariance::kBatchPerRank;

int WorldRank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int WorldSize() {
  int s = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

// A fresh folder shared by all ranks (rank 0 names it, everyone learns the name); removed when
// every rank is done with it. Collective: construct and destroy it on every rank.
class SharedTempDir {
 public:
  SharedTempDir() {
    char name[64] = {0};
    if (WorldRank() == 0) {
      std::snprintf(name, sizeof(name), "/tmp/moe_ckpt_test_XXXXXX");
      EXPECT_NE(mkdtemp(name), nullptr);
    }
    MPI_Bcast(name, sizeof(name), MPI_CHAR, 0, MPI_COMM_WORLD);
    path_ = name;
  }
  ~SharedTempDir() {
    MPI_Barrier(MPI_COMM_WORLD);
    if (WorldRank() == 0) std::filesystem::remove_all(path_);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

proto::TrainConfig Config(int ep_size, int batch_per_rank) {
  proto::TrainConfig c = ep_invariance::SmallVmoe(ep_size, batch_per_rank);
  c.set_steps(6);
  return c;
}

// Trains steps [from, to) on this rank's slice; returns the losses.
std::vector<double> Train(TrainingSession* s, int64_t from, int64_t to, int64_t first,
                          int64_t count) {
  auto batches = ep_invariance::SingleTaskBatches();
  std::vector<double> losses;
  Batch b;
  for (int64_t step = from; step < to; ++step) {
    batches(step, first, count, &b);
    losses.push_back(s->TrainStep(step, b.images, b.labels).loss);
  }
  return losses;
}

bool SaveAll(const std::string& dir, int64_t step, const proto::TrainConfig& cfg,
             TrainingSession* s, MpiCommunicator* comm, std::string* error) {
  CheckpointSaveStats stats;
  const bool ok = SaveCheckpoint(dir, step, cfg, s, comm, &stats, error);
  int all_ok = ok ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all_ok == 1;
}

TEST(Checkpoint, ResumeOnTheSameLayoutIsBitIdentical) {
  const int rank = WorldRank(), world = WorldSize();
  const SharedTempDir tmp;
  const std::string& dir = tmp.path();
  const proto::TrainConfig cfg = Config(world, kBatchPerRank);
  MpiCommunicator comm(MPI_COMM_WORLD, world);
  TrainingSession straight(cfg, &comm, nullptr);
  const auto want = Train(&straight, 0, 6, rank * kBatchPerRank, kBatchPerRank);

  TrainingSession first(cfg, &comm, nullptr);
  Train(&first, 0, 3, rank * kBatchPerRank, kBatchPerRank);
  std::string error;
  ASSERT_TRUE(SaveAll(dir, 3, cfg, &first, &comm, &error)) << error;
  std::string path;
  ASSERT_TRUE(FindNewestCheckpoint(dir, &path, &error)) << error;
  EXPECT_EQ(path, CheckpointPath(dir, 3));
  TrainingSession resumed(cfg, &comm, nullptr);
  proto::CheckpointManifest m;
  ASSERT_TRUE(LoadCheckpoint(path, cfg, &resumed, &m, &error)) << error;
  EXPECT_EQ(m.step(), 3);
  EXPECT_EQ(m.layout().ep_size(), world);
  const auto got = Train(&resumed, 3, 6, rank * kBatchPerRank, kBatchPerRank);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(got[i], want[3 + i]) << "step " << 3 + i;
}

// Every parameter of `s` equals, bit for bit, the same (name, expert) of `ref`.
void ExpectSameParameters(TrainingSession* s, TrainingSession* ref, const char* what) {
  const auto by_key = ep_invariance::ByKey(ref);
  int compared = 0;
  for (Parameter* p : s->Parameters()) {
    auto it = by_key.find({p->name, p->global_expert_id});
    ASSERT_NE(it, by_key.end()) << p->name;
    std::vector<float> v1, m1, a1, v2, m2, a2;
    s->GetTrainingState(p, &v1, &m1, &a1);
    ref->GetTrainingState(it->second, &v2, &m2, &a2);
    EXPECT_TRUE(v1 == v2 && m1 == m2 && a1 == a2) << what << ": " << p->name << " expert "
                                                  << p->global_expert_id;
    ++compared;
  }
  EXPECT_GT(compared, 0);
  EXPECT_EQ(s->optimizer_step_count(), ref->optimizer_step_count()) << what;
}

TEST(Checkpoint, LoadsOnAnyLayout) {
  const int world = WorldSize();
  const SharedTempDir tmp;
  const std::string& dir = tmp.path();
  MpiCommunicator ep4(MPI_COMM_WORLD, world);
  TrainingSession writer(Config(world, kBatchPerRank), &ep4, nullptr);
  Train(&writer, 0, 2, WorldRank() * kBatchPerRank, kBatchPerRank);
  std::string error;
  ASSERT_TRUE(SaveAll(dir, 2, Config(world, kBatchPerRank), &writer, &ep4, &error)) << error;
  const std::string path = CheckpointPath(dir, 2);
  // The single-rank reference: all experts, straight from the files.
  SelfCommunicator self;
  TrainingSession one(Config(1, kBatchPerRank * world), &self, nullptr);
  proto::CheckpointManifest m;
  ASSERT_TRUE(LoadCheckpoint(path, Config(1, kBatchPerRank * world), &one, &m, &error)) << error;
  ExpectSameParameters(&writer, &one, "EP=4 writer vs EP=1 reader");
  if (world % 2 == 0) {
    MpiCommunicator ep2(MPI_COMM_WORLD, 2);
    TrainingSession two(Config(2, kBatchPerRank), &ep2, nullptr);
    ASSERT_TRUE(LoadCheckpoint(path, Config(2, kBatchPerRank), &two, &m, &error)) << error;
    ExpectSameParameters(&two, &one, "EP=2 x DP=2 reader vs EP=1 reader");
  }
}

// Flips one byte of `file` at `offset`.
void CorruptByte(const std::string& file, long offset) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(f.good()) << file;
  f.seekg(offset);
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x40);
  f.seekp(offset);
  f.write(&c, 1);
}

void ExpectRefusals(const std::string& dir, const std::string& path);

TEST(Checkpoint, RefusesWhatItCannotTrust) {
  const int world = WorldSize();
  const SharedTempDir tmp;
  const std::string& dir = tmp.path();
  MpiCommunicator comm(MPI_COMM_WORLD, world);
  const proto::TrainConfig cfg = Config(world, kBatchPerRank);
  TrainingSession writer(cfg, &comm, nullptr);
  std::string error;
  ASSERT_TRUE(SaveAll(dir, 1, cfg, &writer, &comm, &error)) << error;
  MPI_Barrier(MPI_COMM_WORLD);
  if (WorldRank() == 0) ExpectRefusals(dir, CheckpointPath(dir, 1));
}

// File work on one rank: each way a checkpoint cannot be trusted, and its message.
void ExpectRefusals(const std::string& dir, const std::string& path) {
  const int world = WorldSize();
  std::string error;
  SelfCommunicator self;
  const proto::TrainConfig one_cfg = Config(1, kBatchPerRank * world);
  proto::CheckpointManifest m;

  proto::TrainConfig wider = one_cfg;
  wider.mutable_model()->set_hidden_dim(24);
  TrainingSession other_model(wider, &self, nullptr);
  EXPECT_FALSE(LoadCheckpoint(path, wider, &other_model, &m, &error));
  EXPECT_NE(error.find("embed.proj.w [value]: checkpoint shape [49, 16], model shape [49, 24]"),
            std::string::npos) << error;

  proto::TrainConfig more_experts = one_cfg;
  more_experts.mutable_model()->mutable_moe()->set_num_experts(16);
  TrainingSession sixteen(more_experts, &self, nullptr);
  EXPECT_FALSE(LoadCheckpoint(path, more_experts, &sixteen, &m, &error));
  EXPECT_NE(error.find("model.moe.num_experts=8, this run has model.moe.num_experts=16"),
            std::string::npos) << error;

  TrainingSession reader(one_cfg, &self, nullptr);
  CorruptByte(path + "/shard-r00001.bin", 100);
  EXPECT_FALSE(LoadCheckpoint(path, one_cfg, &reader, &m, &error));
  EXPECT_NE(error.find("checksum mismatch in " + path + "/shard-r00001.bin for tensor "),
            std::string::npos) << error;
  ASSERT_EQ(unlink((path + "/shard-r00001.bin").c_str()), 0);
  EXPECT_FALSE(LoadCheckpoint(path, one_cfg, &reader, &m, &error));
  EXPECT_NE(error.find("missing or short shard"), std::string::npos) << error;
  EXPECT_NE(error.find("shard-r00001.bin: open failed"), std::string::npos) << error;

  // Incomplete checkpoints are never picked: a newer step without its manifest, a partial dir.
  ASSERT_EQ(mkdir((dir + "/step-00000009").c_str(), 0755), 0);
  ASSERT_EQ(mkdir((dir + "/.step-00000010.partial").c_str(), 0755), 0);
  std::string newest;
  ASSERT_TRUE(FindNewestCheckpoint(dir, &newest, &error)) << error;
  EXPECT_EQ(newest, path);
  ASSERT_TRUE(RemoveFlatDirectory(path, &error)) << error;
  EXPECT_FALSE(FindNewestCheckpoint(dir, &newest, &error));
  EXPECT_NE(error.find("no complete checkpoint"), std::string::npos) << error;
}

TEST(Checkpoint, KeepsTheNewestK) {
  const int world = WorldSize();
  const SharedTempDir tmp;
  const std::string& dir = tmp.path();
  MpiCommunicator comm(MPI_COMM_WORLD, world);
  const proto::TrainConfig cfg = Config(world, kBatchPerRank);
  TrainingSession s(cfg, &comm, nullptr);
  std::string error;
  for (int step : {1, 2, 3}) ASSERT_TRUE(SaveAll(dir, step, cfg, &s, &comm, &error)) << error;
  if (WorldRank() == 0) {
    EXPECT_TRUE(PruneCheckpoints(dir, 2, &error)) << error;
    EXPECT_FALSE(IsDirectory(CheckpointPath(dir, 1)));
    EXPECT_TRUE(IsDirectory(CheckpointPath(dir, 2)));
    EXPECT_TRUE(IsDirectory(CheckpointPath(dir, 3)));
  }
}

}  // namespace
}  // namespace moe
