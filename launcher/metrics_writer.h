// JSON-lines metrics: one object per training step and one per evaluation. An empty path
// disables writing (non-zero ranks), so callers need no rank checks.
//
// No silent loss: Open proves the path takes data before training starts, and every later
// write, flush and the final close are checked. After the first failure the writer stops
// writing and keeps the reason; the trainer checks ok() after each record and ends the job.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

#include "launcher/training_session.h"

namespace moe {

class MetricsWriter {
 public:
  MetricsWriter() = default;
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;

  // Opens (truncates) `path` and writes and flushes one probe byte, so /dev/full or a full disk
  // fails here; on a regular file the probe is truncated away again, a pipe or device keeps it
  // as a leading empty line. A pipe must already have its reader. On failure returns false with
  // "cannot ... (<strerror>)" in *error. An empty path opens nothing and succeeds.
  bool Open(const std::string& path, std::string* error);

  void WriteStep(int64_t step, const StepStats& s);
  // {"step", "eval_accuracy"}, with "epoch" when epoch > 0 (the per-epoch evaluation).
  void WriteEval(int64_t step, double accuracy, int64_t epoch = 0);
  // Any other record (the run summary, routing matrices): one JSON object, written as one line.
  void WriteObject(const std::string& json_object);
  // Flushes and closes the file; false when this or any earlier write failed.
  bool Close();

  bool ok() const { return error_.empty(); }
  // The first failure: "<write|close> failed after step N: <strerror>" (N = steps whose records
  // were due when it happened); empty while ok().
  const std::string& error() const { return error_; }

 private:
  void Emit(const std::string& line);
  void Fail(const char* what, int err);

  FILE* file_ = nullptr;
  int64_t steps_done_ = 0;
  std::string error_;
};

}  // namespace moe
