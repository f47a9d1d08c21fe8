// Checkpoints: save a training run, and resume it on the same or on any other EP x DP layout.
//
// On disk, DIR/step-NNNNNNNN/ (NNNNNNNN = steps completed) holds
//   shard-rRRRRR.bin  raw float32 tensors written by world rank RRRRR, and
//   manifest.pb       a proto::CheckpointManifest (proto/checkpoint.proto), written last.
// Every tensor is keyed by (parameter name, global expert id, slot), never by rank: slot "value"
// and AdamW's "adam_m" and "adam_v". Who writes what: world rank 0 writes the dense parameters
// (identical on every rank); data-parallel rank 0 of each expert group writes its experts (the
// DP replicas are identical). So each tensor is written once, and a 1,000-rank job writes in
// parallel from as many ranks as hold distinct experts.
//
// Atomic: everything is written into DIR/.step-NNNNNNNN.partial/, every file fsynced; rank 0
// writes the manifest, renames the folder to step-NNNNNNNN and fsyncs DIR. A crash at any point
// leaves either the previous checkpoints only, or the new one complete. Resume picks only
// step-NNNNNNNN folders whose manifest parses.
//
// Resume: every rank reads the manifest and the byte ranges of the tensors it holds now (its
// dense copies and the experts its new EP rank owns), verifies each checksum, and restores the
// value, the AdamW moments and the optimizer's step count. Batches, router noise and dropout are
// functions of (seed, step, global indices), so nothing else is needed: on the same layout the
// resumed run continues bit for bit; on another layout, within EP-invariance rounding.
//
// Errors are returned as text ("checkpoint error: ..."), for the caller to agree on over the
// world and report once; the save path keeps the ranks' collectives matched whatever fails.
#pragma once

#include <cstdint>
#include <string>

#include "comm/mpi_communicator.h"
#include "launcher/training_session.h"
#include "proto/checkpoint.pb.h"
#include "proto/moe_ep.pb.h"

namespace moe {

constexpr int kCheckpointFormatVersion = 1;

// "DIR/step-00000100".
std::string CheckpointPath(const std::string& dir, int64_t step);

struct CheckpointSaveStats {
  std::string path;       // the complete checkpoint
  int64_t bytes = 0;      // over all ranks (shards + manifest)
  double seconds = 0;     // wall time of the save, on this rank
};

// Collective over the world. Saves the state after `step` completed steps. Returns false with
// *error set on the rank(s) where something failed; every rank returns (false on a rank whose own
// part failed, true elsewhere), so the caller must agree on failure over the world.
bool SaveCheckpoint(const std::string& dir, int64_t step, const proto::TrainConfig& config,
                    TrainingSession* session, MpiCommunicator* comm, CheckpointSaveStats* stats,
                    std::string* error);

// Testing only: rank 0 kills itself (SIGKILL) while saving the checkpoint of `step`, after the
// shards are written and before the manifest, to prove such a crash leaves nothing resumable.
void SetCheckpointKillForTesting(int64_t step);

// Rank 0's part of --keep_checkpoints: removes all but the newest `keep` complete checkpoints in
// dir (keep <= 0: keeps all). Not collective.
bool PruneCheckpoints(const std::string& dir, int keep, std::string* error);

// The newest complete checkpoint in dir; false (with *error naming dir) if there is none.
bool FindNewestCheckpoint(const std::string& dir, std::string* path, std::string* error);

// Not collective. Restores this rank's parameters and optimizer state from the checkpoint at
// `path` into `session`, built from `config` (same model; any layout). *manifest receives the
// checkpoint's manifest (its step is where training continues).
bool LoadCheckpoint(const std::string& path, const proto::TrainConfig& config,
                    TrainingSession* session, proto::CheckpointManifest* manifest,
                    std::string* error);

}  // namespace moe
