#include "launcher/metrics_writer.h"

#include <glog/logging.h>

#include <iomanip>

namespace moe {

MetricsWriter::MetricsWriter(const std::string& path) {
  if (path.empty()) return;
  out_.open(path);
  CHECK(out_) << "--metrics_out=" << path << ": cannot open for writing";
  out_ << std::setprecision(9);
}

void MetricsWriter::WriteStep(int64_t step, const StepStats& s) {
  if (!out_.is_open()) return;
  out_ << "{\"step\": " << step << ", \"loss\": " << s.loss << ", \"aux_loss\": " << s.aux_loss
       << ", \"accuracy\": " << s.accuracy << ", \"dropped_fraction\": " << s.dropped_fraction
       << ", \"capacity_use\": " << s.capacity_use << ", \"grad_norm\": " << s.grad_norm
       << ", \"lr\": " << s.learning_rate << ", \"tokens_per_expert\": [";
  for (size_t l = 0; l < s.tokens_per_expert.size(); ++l) {
    out_ << (l ? ", " : "") << "[";
    for (size_t e = 0; e < s.tokens_per_expert[l].size(); ++e)
      out_ << (e ? ", " : "") << s.tokens_per_expert[l][e];
    out_ << "]";
  }
  out_ << "]";
  auto list = [this](const char* key, const std::vector<double>& v) {
    out_ << ", \"" << key << "\": [";
    for (size_t i = 0; i < v.size(); ++i) out_ << (i ? ", " : "") << v[i];
    out_ << "]";
  };
  list("layer_dropped_fraction", s.layer_dropped_fraction);
  list("layer_capacity_use", s.layer_capacity_use);
  out_ << "}\n";
  out_.flush();
}

void MetricsWriter::WriteEval(int64_t step, double accuracy) {
  if (!out_.is_open()) return;
  out_ << "{\"step\": " << step << ", \"eval_accuracy\": " << accuracy << "}\n";
  out_.flush();
}

void MetricsWriter::WriteObject(const std::string& json_object) {
  if (!out_.is_open()) return;
  out_ << json_object << "\n";
  out_.flush();
}

}  // namespace moe
