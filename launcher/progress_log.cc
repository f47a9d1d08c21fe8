#include "launcher/progress_log.h"

#include <glog/logging.h>

#include <algorithm>
#include <iomanip>
#include <sstream>

namespace moe {

std::string FormatSeconds(double s) {
  std::ostringstream os;
  const int64_t t = static_cast<int64_t>(s + 0.5);
  if (t >= 3600) os << t / 3600 << "h";
  if (t >= 60) os << std::setw(t >= 3600 ? 2 : 1) << std::setfill('0') << (t / 60) % 60 << "m";
  os << std::setw(t >= 60 ? 2 : 1) << std::setfill('0') << t % 60 << "s";
  return os.str();
}

ProgressLog::ProgressLog(int64_t first_step, int64_t total_steps, int64_t global_batch,
                         int log_every)
    : first_step_(first_step),
      total_steps_(total_steps),
      global_batch_(global_batch),
      log_every_(std::max(1, log_every)),
      start_(Clock::now()),
      window_start_(start_) {}

void ProgressLog::Add(int64_t step, const StepStats& s) {
  loss_ += s.loss;
  accuracy_ += s.accuracy;
  dropped_ += s.dropped_fraction;
  ++window_;
  const bool last = step + 1 == total_steps_;
  if ((step + 1) % log_every_ != 0 && !last) return;
  const auto now = Clock::now();
  const double dt = std::chrono::duration<double>(now - window_start_).count();
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double eta = elapsed / static_cast<double>(step + 1 - first_step_) *
                     static_cast<double>(total_steps_ - step - 1);
  LOG(INFO) << "step " << step + 1 << "/" << total_steps_ << std::fixed << std::setprecision(4)
            << "  loss " << loss_ / window_ << "  aux " << s.aux_loss << "  acc "
            << std::setprecision(3) << accuracy_ / window_ << "  img/s " << std::setprecision(1)
            << window_ * global_batch_ / dt << "  dropped " << std::setprecision(3)
            << dropped_ / window_ << "  lr " << std::setprecision(5) << s.learning_rate
            << (s.superclass_accuracy >= 0  // Mobile V-MoE: router hits its super-class
                    ? "  sc-acc " + std::to_string(s.superclass_accuracy).substr(0, 5)
                    : std::string())
            << "  ETA " << FormatSeconds(eta);
  loss_ = accuracy_ = dropped_ = 0;
  window_ = 0;
  window_start_ = now;
}

}  // namespace moe
