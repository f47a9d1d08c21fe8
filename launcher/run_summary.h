// The per-run summary: what a results table compares across model families (size, cost,
// speed, quality), as one greppable log line and one JSON object for the metrics file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moe {

// One all-to-all phase of the communication profile (launcher/a2a_profile.h), per training step
// and averaged over ranks.
struct AllToAllRow {
  std::string phase;
  double bytes_per_rank = 0;  // data one rank sends per step
  double ms = 0;              // phase time per step
  double skew_ms = 0;         // waiting for the last rank of the EP group to arrive
  double transfer_ms = 0;     // the rest
  double device_ms = 0;       // CUDA-event time of the exchanges (GPU path), else 0
  double algbw_gbs = 0;       // GB/s = 1e9 bytes/s, over the phase time
  double busbw_gbs = 0;
};

struct RunSummary {
  std::string family;      // config model.family ("vit", "mixer", ...)
  std::string model;       // the config file's name without folder and extension
  int64_t dense_params = 0;
  int64_t expert_params = 0;  // every expert once, however many ranks hold replicas
  double flops_per_image = 0;
  double images_per_s = 0;    // training images / training time (periodic evaluations excluded)
  double train_wall_s = 0;    // the training loop's wall time, periodic evaluations included
  int64_t steps = 0;
  int64_t global_batch = 0;
  int world = 0;
  double test_accuracy = 0;  // the final evaluation's (the last)
  // recipe.eval_every_epoch: the best per-epoch test accuracy and its epoch (the first to reach
  // it); best_epoch 0: no per-epoch evaluation, and neither key is written.
  double best_test_accuracy = 0;
  int64_t best_epoch = 0;
  std::vector<AllToAllRow> all_to_alls;  // empty: no all-to-all ran (dense nets)
  int ep_size = 0;
  int straggler_rank = -1;                // the world rank that arrived last most often
  double straggler_fraction = 0;          // of the all-to-alls of its EP group

  int64_t total_params() const { return dense_params + expert_params; }
};

// "summary: family=vit model=vmoe_tiny params=... dense_params=... expert_params=...
// flops_per_image=... images_per_s=... train_wall_s=... steps=... global_batch=... ranks=...
// test_accuracy=... [best_test_accuracy=... best_epoch=...]" (space-separated key=value pairs; no
// value contains a space).
std::string FormatSummaryLine(const RunSummary& s);
// {"summary": {...}} with the same keys, one line, no trailing newline. With all-to-alls, also
// "a2a": {"<phase>": {"bytes_per_rank", "ms", "skew_ms", "transfer_ms", "device_ms",
// "algbw_gbs", "busbw_gbs"}, ...}, "a2a_ep_size", "a2a_straggler": {"rank", "fraction"}
// (values per training step, mean over ranks).
std::string SummaryJson(const RunSummary& s);
// "launcher/configs/vmoe_tiny.pbtxt" -> "vmoe_tiny".
std::string ModelNameFromConfigPath(const std::string& path);

}  // namespace moe
