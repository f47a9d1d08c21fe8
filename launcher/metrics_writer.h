// JSON-lines metrics: one object per training step and one per evaluation. An empty path
// disables writing (non-zero ranks), so callers need no rank checks.
#pragma once

#include <fstream>
#include <string>

#include "launcher/training_session.h"

namespace moe {

class MetricsWriter {
 public:
  explicit MetricsWriter(const std::string& path);
  void WriteStep(int64_t step, const StepStats& s);
  void WriteEval(int64_t step, double accuracy);
  // Any other record (the run summary, routing matrices): one JSON object, written as one line.
  void WriteObject(const std::string& json_object);

 private:
  std::ofstream out_;
};

}  // namespace moe
