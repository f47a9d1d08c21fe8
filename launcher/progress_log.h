// The progress line rank 0 prints every log_every steps: means over the window since the last
// line, images/s, and the ETA of the steps left in this run (a resumed run counts from its
// first step).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "launcher/training_session.h"

namespace moe {

// "1h02m03s", "2m03s", "3s".
std::string FormatSeconds(double s);

class ProgressLog {
 public:
  ProgressLog(int64_t first_step, int64_t total_steps, int64_t global_batch, int log_every);
  // Adds the stats of `step` (0-based); LOG(INFO)s the line when it is due.
  void Add(int64_t step, const StepStats& s);

 private:
  using Clock = std::chrono::steady_clock;
  int64_t first_step_, total_steps_, global_batch_;
  int log_every_;
  Clock::time_point start_, window_start_;
  double loss_ = 0, accuracy_ = 0, dropped_ = 0;
  int window_ = 0;
};

}  // namespace moe
