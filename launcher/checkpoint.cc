#include "launcher/checkpoint.h"

#include <signal.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <tuple>
#include <vector>

#include "launcher/checkpoint_files.h"
#include "launcher/config.h"

namespace moe {
namespace {

constexpr const char* kManifest = "manifest.pb";
int64_t g_kill_at_step = -1;
constexpr const char* kSlots[3] = {"value", "adam_m", "adam_v"};

std::string StepName(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "step-%08lld", static_cast<long long>(step));
  return buf;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string TensorLabel(const std::string& name, int gid, const std::string& slot) {
  return name + (gid >= 0 ? " (expert " + std::to_string(gid) + ")" : "") + " [" + slot + "]";
}

// Dense tensors are written by world rank 0, experts by DP rank 0 of each expert group.
bool WritesParameter(const Parameter& p, const Communicator& comm) {
  return p.is_expert() ? comm.Rank(GroupKind::kData) == 0 : comm.Rank(GroupKind::kWorld) == 0;
}

// This rank's shard: the bytes and one manifest record per tensor slot.
void BuildShard(TrainingSession* session, const Communicator& comm, const std::string& file,
                std::string* bytes, proto::CheckpointManifest* records) {
  std::vector<float> slot_data[3];
  for (Parameter* p : session->Parameters()) {
    if (!WritesParameter(*p, comm)) continue;
    session->GetTrainingState(p, &slot_data[0], &slot_data[1], &slot_data[2]);
    for (int s = 0; s < 3; ++s) {
      const size_t n = slot_data[s].size() * sizeof(float);
      proto::CheckpointTensor* t = records->add_tensors();
      t->set_name(p->name);
      t->set_global_expert_id(p->global_expert_id);
      t->set_slot(kSlots[s]);
      for (int64_t d : p->value.shape()) t->add_shape(d);
      t->set_file(file);
      t->set_offset(bytes->size());
      t->set_bytes(n);
      t->set_checksum(Fnv1a64(slot_data[s].data(), n));
      bytes->append(reinterpret_cast<const char*>(slot_data[s].data()), n);
    }
  }
}

// Every rank learns whether any rank failed (a 0/1 max over the world).
bool AnyRankFailed(bool failed, MpiCommunicator* comm) {
  double f = failed ? 1 : 0;
  comm->AllReduceMax(&f, 1, GroupKind::kWorld);
  return f > 0;
}

// Rank 0: a fresh partial folder (a stale one from a crashed save is removed first).
bool PreparePartialDir(const std::string& dir, const std::string& partial, std::string* error) {
  if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    *error = "checkpoint error: --checkpoint_dir=" + dir + ": mkdir failed: " + std::strerror(errno);
    return false;
  }
  if (IsDirectory(partial) && !RemoveFlatDirectory(partial, error)) return false;
  if (mkdir(partial.c_str(), 0755) != 0) {
    *error = "checkpoint error: " + partial + ": mkdir failed: " + std::strerror(errno);
    return false;
  }
  return true;
}

// Rank 0: manifest from everyone's records, written last, then the rename that completes it.
bool CommitManifest(const std::string& dir, const std::string& partial, const std::string& final_path,
                    proto::CheckpointManifest manifest, const std::vector<std::string>& parts,
                    int64_t* bytes, std::string* error) {
  for (const std::string& part : parts) {
    proto::CheckpointManifest records;
    if (!records.ParseFromString(part)) {
      *error = "checkpoint error: a rank's tensor records did not parse";
      return false;
    }
    for (const auto& t : records.tensors()) *manifest.add_tensors() = t;
    for (const auto& f : records.shard_files()) manifest.add_shard_files(f);
  }
  const std::string serialized = manifest.SerializeAsString();
  for (const auto& t : manifest.tensors()) *bytes += static_cast<int64_t>(t.bytes());
  *bytes += static_cast<int64_t>(serialized.size());
  std::string io_error;
  bool ok = WriteFileDurably(partial + "/" + kManifest, serialized.data(), serialized.size(), &io_error) &&
            SyncDirectory(partial, &io_error);
  if (ok && IsDirectory(final_path)) ok = RemoveFlatDirectory(final_path, &io_error);  // a re-save
  if (ok && std::rename(partial.c_str(), final_path.c_str()) != 0)
    io_error = partial + ": rename to " + final_path + " failed: " + std::strerror(errno), ok = false;
  if (ok) ok = SyncDirectory(dir, &io_error);
  if (!ok) *error = "checkpoint error: " + io_error;
  return ok;
}

proto::CheckpointManifest ManifestHeader(int64_t step, const proto::TrainConfig& config,
                                         TrainingSession* session, const Communicator& comm) {
  proto::CheckpointManifest m;
  m.set_format_version(kCheckpointFormatVersion);
  *m.mutable_config() = config;
  m.set_config_hash(ConfigHash(config));
  m.set_step(step);
  m.mutable_layout()->set_world_size(comm.Size(GroupKind::kWorld));
  m.mutable_layout()->set_ep_size(comm.Size(GroupKind::kExpert));
  m.mutable_layout()->set_dp_size(comm.Size(GroupKind::kData));
  m.set_optimizer_steps(session->optimizer_step_count());
  m.set_data_seed(config.seed());
  m.set_global_batch(session->global_batch());
  return m;
}

}  // namespace

void SetCheckpointKillForTesting(int64_t step) { g_kill_at_step = step; }

std::string CheckpointPath(const std::string& dir, int64_t step) { return dir + "/" + StepName(step); }

bool SaveCheckpoint(const std::string& dir, int64_t step, const proto::TrainConfig& config,
                    TrainingSession* session, MpiCommunicator* comm, CheckpointSaveStats* stats,
                    std::string* error) {
  const auto start = std::chrono::steady_clock::now();
  const int rank = comm->Rank(GroupKind::kWorld);
  const std::string final_path = CheckpointPath(dir, step);
  const std::string partial = dir + "/." + StepName(step) + ".partial";
  bool ok = rank != 0 || PreparePartialDir(dir, partial, error);
  if (AnyRankFailed(!ok, comm)) return ok;

  char file[32];
  std::snprintf(file, sizeof(file), "shard-r%05d.bin", rank);
  std::string bytes;
  proto::CheckpointManifest records;
  BuildShard(session, *comm, file, &bytes, &records);
  if (records.tensors_size() > 0) {
    records.add_shard_files(file);
    std::string io_error;
    ok = WriteFileDurably(partial + "/" + file, bytes.data(), bytes.size(), &io_error);
    if (!ok) *error = "checkpoint error: " + io_error;
  }
  if (AnyRankFailed(!ok, comm)) return ok;

  if (rank == 0 && step == g_kill_at_step) raise(SIGKILL);
  std::vector<std::string> parts;
  comm->GatherBytes(records.SerializeAsString(), 0, &parts);
  int64_t total = 0;
  if (rank == 0)
    ok = CommitManifest(dir, partial, final_path, ManifestHeader(step, config, session, *comm),
                        parts, &total, error);
  if (AnyRankFailed(!ok, comm)) return ok;
  stats->path = final_path;
  stats->bytes = total;
  stats->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return true;
}

namespace {

// Complete checkpoints in dir, oldest first: step-NNNNNNNN folders whose manifest parses.
std::vector<std::pair<int64_t, std::string>> CompleteCheckpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::vector<std::string> names;
  std::string ignored;
  if (!ListDirectory(dir, &names, &ignored)) return found;
  for (const std::string& n : names) {
    long long step = -1;
    char tail = 0;
    if (n.size() != 13 || std::sscanf(n.c_str(), "step-%8lld%c", &step, &tail) != 1) continue;
    std::string bytes;
    proto::CheckpointManifest m;
    if (!ReadWholeFile(dir + "/" + n + "/" + kManifest, &bytes, &ignored)) continue;
    if (!m.ParseFromString(bytes) || m.step() != step) continue;
    found.emplace_back(step, dir + "/" + n);
  }
  std::sort(found.begin(), found.end());
  return found;
}

}  // namespace

bool PruneCheckpoints(const std::string& dir, int keep, std::string* error) {
  if (keep <= 0) return true;
  const auto all = CompleteCheckpoints(dir);
  for (size_t i = 0; i + static_cast<size_t>(keep) < all.size(); ++i) {
    std::string io_error;
    if (!RemoveFlatDirectory(all[i].second, &io_error)) {
      *error = "checkpoint error: --keep_checkpoints: " + io_error;
      return false;
    }
  }
  return true;
}

bool FindNewestCheckpoint(const std::string& dir, std::string* path, std::string* error) {
  const auto all = CompleteCheckpoints(dir);
  if (all.empty()) {
    *error = "checkpoint error: --resume: no complete checkpoint (step-NNNNNNNN/" +
             std::string(kManifest) + ") in --checkpoint_dir=" + dir;
    return false;
  }
  *path = all.back().second;
  return true;
}

namespace {

using TensorKey = std::tuple<std::string, int, std::string>;

bool ReadManifest(const std::string& path, proto::CheckpointManifest* m, std::string* error) {
  std::string bytes, io_error;
  if (!ReadWholeFile(path + "/" + kManifest, &bytes, &io_error)) {
    *error = "checkpoint error: " + io_error + " (not a complete checkpoint)";
    return false;
  }
  if (!m->ParseFromString(bytes) || m->format_version() != kCheckpointFormatVersion) {
    *error = "checkpoint error: " + path + "/" + kManifest + ": not a moe-ep checkpoint manifest "
             "of format version " + std::to_string(kCheckpointFormatVersion);
    return false;
  }
  return true;
}

bool CheckSameExperts(const std::string& path, const proto::CheckpointManifest& m,
                      const proto::TrainConfig& config, std::string* error) {
  const auto& was = m.config().model();
  const auto& now = config.model();
  const int e_was = was.use_moe() ? was.moe().num_experts() : 0;
  const int e_now = now.use_moe() ? now.moe().num_experts() : 0;
  if (e_was == e_now) return true;
  *error = "checkpoint error: " + path + " was written with model.moe.num_experts=" +
           std::to_string(e_was) + ", this run has model.moe.num_experts=" + std::to_string(e_now) +
           " (experts cannot be added or removed on resume)";
  return false;
}

// Reads one tensor slot into out, checking shape, file and checksum.
bool ReadSlot(const std::string& path, const proto::CheckpointTensor& t, const Parameter& p,
              std::vector<float>* out, std::string* error) {
  const std::vector<int64_t> stored(t.shape().begin(), t.shape().end());
  const std::string label = TensorLabel(t.name(), t.global_expert_id(), t.slot());
  if (stored != p.value.shape()) {
    *error = "checkpoint error: parameter " + label + ": checkpoint shape " + ShapeString(stored) +
             ", model shape " + ShapeString(p.value.shape()) + " (a checkpoint of another model?)";
    return false;
  }
  out->resize(static_cast<size_t>(p.value.numel()));
  const std::string file = path + "/" + t.file();
  std::string io_error;
  if (t.bytes() != out->size() * sizeof(float)) {
    *error = "checkpoint error: " + file + ": tensor " + label + " has " +
             std::to_string(t.bytes()) + " bytes in the manifest, the shape needs " +
             std::to_string(out->size() * sizeof(float));
    return false;
  }
  if (!ReadFileRange(file, t.offset(), t.bytes(), out->data(), &io_error)) {
    *error = "checkpoint error: missing or short shard for tensor " + label + ": " + io_error;
    return false;
  }
  const uint64_t sum = Fnv1a64(out->data(), t.bytes());
  if (sum == t.checksum()) return true;
  char buf[96];
  std::snprintf(buf, sizeof(buf), " (stored %016llx, computed %016llx)",
                static_cast<unsigned long long>(t.checksum()), static_cast<unsigned long long>(sum));
  *error = "checkpoint error: checksum mismatch in " + file + " for tensor " + label + buf;
  return false;
}

}  // namespace

bool LoadCheckpoint(const std::string& path, const proto::TrainConfig& config,
                    TrainingSession* session, proto::CheckpointManifest* manifest,
                    std::string* error) {
  if (!ReadManifest(path, manifest, error) || !CheckSameExperts(path, *manifest, config, error))
    return false;
  std::map<TensorKey, const proto::CheckpointTensor*> index;
  for (const auto& t : manifest->tensors()) index[{t.name(), t.global_expert_id(), t.slot()}] = &t;
  std::vector<float> slot_data[3];
  for (Parameter* p : session->Parameters()) {
    for (int s = 0; s < 3; ++s) {
      auto it = index.find({p->name, p->global_expert_id, kSlots[s]});
      if (it == index.end()) {
        *error = "checkpoint error: parameter " + TensorLabel(p->name, p->global_expert_id, kSlots[s]) +
                 " is not in " + path + " (a checkpoint of another model?)";
        return false;
      }
      if (!ReadSlot(path, *it->second, *p, &slot_data[s], error)) return false;
    }
    session->SetTrainingState(p, slot_data[0].data(), slot_data[1].data(), slot_data[2].data());
  }
  session->set_optimizer_step_count(manifest->optimizer_steps());
  return true;
}

}  // namespace moe
