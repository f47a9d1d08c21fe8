// The per-run summary: what a results table compares across model families (size, cost,
// speed, quality), as one greppable log line and one JSON object for the metrics file.
#pragma once

#include <cstdint>
#include <string>

namespace moe {

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
  double test_accuracy = 0;

  int64_t total_params() const { return dense_params + expert_params; }
};

// "summary: family=vit model=vmoe_tiny params=... dense_params=... expert_params=...
// flops_per_image=... images_per_s=... train_wall_s=... steps=... global_batch=... ranks=...
// test_accuracy=..." (space-separated key=value pairs; no value contains a space).
std::string FormatSummaryLine(const RunSummary& s);
// {"summary": {...}} with the same keys, one line, no trailing newline.
std::string SummaryJson(const RunSummary& s);
// "launcher/configs/vmoe_tiny.pbtxt" -> "vmoe_tiny".
std::string ModelNameFromConfigPath(const std::string& path);

}  // namespace moe
