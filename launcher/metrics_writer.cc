#include "launcher/metrics_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iomanip>
#include <sstream>

namespace moe {
namespace {

std::ostringstream Record() {
  std::ostringstream os;
  // 17 significant digits: a double round-trips, so two runs' losses compare bit for bit
  // (a resumed run against an uninterrupted one).
  os << std::setprecision(17);
  return os;
}

// Opens without blocking (a pipe with no reader is an error, not a hang), then makes the
// descriptor blocking again for the writes. Returns null with errno set on failure.
FILE* OpenForWriting(const std::string& path) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NONBLOCK, 0644);
  if (fd < 0) return nullptr;
  const int flags = fcntl(fd, F_GETFL);
  FILE* f = flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0 ? nullptr : fdopen(fd, "w");
  if (f == nullptr) {
    const int err = errno;
    close(fd);
    errno = err;
  }
  return f;
}

}  // namespace

MetricsWriter::~MetricsWriter() {
  if (file_ != nullptr) std::fclose(file_);  // an unchecked close only on an early exit path
}

bool MetricsWriter::Open(const std::string& path, std::string* error) {
  if (path.empty()) return true;
  file_ = OpenForWriting(path);
  if (file_ == nullptr) {
    *error = std::string("cannot open for writing (") + std::strerror(errno) +
             (errno == ENXIO ? "; a pipe needs its reader running first)" : ")");
    return false;
  }
  int err = 0;
  if (std::fputc('\n', file_) == EOF || std::fflush(file_) != 0) err = errno;
  struct stat st;
  if (err == 0 && fstat(fileno(file_), &st) == 0 && S_ISREG(st.st_mode) &&
      (ftruncate(fileno(file_), 0) != 0 || std::fseek(file_, 0, SEEK_SET) != 0))
    err = errno;
  if (err == 0) return true;
  *error = std::string("cannot write (") + std::strerror(err) + ")";
  std::fclose(file_);
  file_ = nullptr;
  return false;
}

void MetricsWriter::Fail(const char* what, int err) {
  if (!error_.empty()) return;
  error_ = std::string(what) + " failed after step " + std::to_string(steps_done_) + ": " +
           std::strerror(err);
}

void MetricsWriter::Emit(const std::string& line) {
  if (file_ == nullptr || !error_.empty()) return;
  // One flush per record: a crash later loses nothing already reported, and a failing disk is
  // seen at the record that failed.
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0)
    Fail("write", errno);
}

void MetricsWriter::WriteStep(int64_t step, const StepStats& s) {
  if (file_ == nullptr) return;
  steps_done_ = step + 1;
  std::ostringstream out = Record();
  out << "{\"step\": " << step << ", \"loss\": " << s.loss << ", \"aux_loss\": " << s.aux_loss
      << ", \"accuracy\": " << s.accuracy << ", \"dropped_fraction\": " << s.dropped_fraction
      << ", \"capacity_use\": " << s.capacity_use << ", \"grad_norm\": " << s.grad_norm
      << ", \"lr\": " << s.learning_rate << ", \"tokens_per_expert\": [";
  for (size_t l = 0; l < s.tokens_per_expert.size(); ++l) {
    out << (l ? ", " : "") << "[";
    for (size_t e = 0; e < s.tokens_per_expert[l].size(); ++e)
      out << (e ? ", " : "") << s.tokens_per_expert[l][e];
    out << "]";
  }
  out << "]";
  auto list = [&out](const char* key, const std::vector<double>& v) {
    out << ", \"" << key << "\": [";
    for (size_t i = 0; i < v.size(); ++i) out << (i ? ", " : "") << v[i];
    out << "]";
  };
  list("layer_dropped_fraction", s.layer_dropped_fraction);
  list("layer_capacity_use", s.layer_capacity_use);
  out << "}\n";
  Emit(out.str());
}

void MetricsWriter::WriteEval(int64_t step, double accuracy, int64_t epoch) {
  if (file_ == nullptr) return;
  steps_done_ = step;
  std::ostringstream out = Record();
  out << "{\"step\": " << step;
  if (epoch > 0) out << ", \"epoch\": " << epoch;
  out << ", \"eval_accuracy\": " << accuracy << "}\n";
  Emit(out.str());
}

void MetricsWriter::WriteObject(const std::string& json_object) { Emit(json_object + "\n"); }

bool MetricsWriter::Close() {
  if (file_ == nullptr) return ok();
  if (std::fclose(file_) != 0) Fail("close", errno);
  file_ = nullptr;
  return ok();
}

}  // namespace moe
