#include "launcher/output_files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace moe {
namespace {

std::string Reason(int err) { return std::string(std::strerror(err)); }

// A name no other rank or host uses at the same time, so ranks sharing a folder do not collide.
std::string ProbeName(const std::string& dir) {
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  return dir + "/.moe_ep_probe." + host + "." + std::to_string(getpid());
}

// Writes all of `bytes` to `fd` (write(2) may write less than asked). Returns 0 or errno.
int WriteAll(int fd, const char* bytes, size_t n) {
  while (n > 0) {
    const ssize_t w = write(fd, bytes, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return errno;
    bytes += w;
    n -= static_cast<size_t>(w);
  }
  return 0;
}

}  // namespace

bool CheckOutputDir(const std::string& flag, const std::string& dir, std::string* error) {
  auto fail = [&](const std::string& why) {
    *error = "config error: --" + flag + "=" + dir + ": " + why;
    return false;
  };
  if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST)
    return fail("cannot create this folder (" + Reason(errno) + ")");
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) return fail("cannot create this folder (" + Reason(errno) + ")");
  if (!S_ISDIR(st.st_mode)) return fail("not a directory");
  // access(W_OK) is not enough: root passes it on read-only mounts, and it says nothing about
  // the space or the quota. Creating and writing a real file is what the run will do.
  const std::string probe = ProbeName(dir);
  const int fd = open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
  if (fd < 0) return fail("cannot create a file in this folder (" + Reason(errno) + ")");
  int err = WriteAll(fd, "x", 1);
  if (close(fd) != 0 && err == 0) err = errno;
  unlink(probe.c_str());
  if (err != 0) return fail("cannot write a file in this folder (" + Reason(err) + ")");
  return true;
}

bool CheckOutputFile(const std::string& flag, const std::string& path, std::string* error) {
  auto fail = [&](const std::string& why) {
    *error = "config error: --" + flag + "=" + path + ": " + why;
    return false;
  };
  struct stat st;
  const bool existed = stat(path.c_str(), &st) == 0;
  if (existed && S_ISDIR(st.st_mode)) return fail("is a directory, not a file");
  // O_APPEND keeps an existing file intact until the run has something to replace it with;
  // O_NONBLOCK makes a pipe without a reader an error instead of a hang.
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_NONBLOCK, 0644);
  if (fd < 0) return fail("cannot open for writing (" + Reason(errno) + ")");
  int err = 0;
  if (fstat(fd, &st) == 0 && !S_ISREG(st.st_mode)) err = WriteAll(fd, "\n", 1);  // /dev/full
  if (close(fd) != 0 && err == 0) err = errno;
  if (!existed) unlink(path.c_str());
  if (err != 0) return fail("cannot write (" + Reason(err) + ")");
  return true;
}

bool WriteWholeFile(const std::string& path, const std::string& bytes, std::string* error) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) {
    *error = path + ": open for writing failed: " + Reason(errno);
    return false;
  }
  const char* step = nullptr;
  int err = 0;
  if (std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size())
    step = "write";
  else if (std::fflush(f) != 0)
    step = "write";  // stdio writes the buffer here
  if (step != nullptr) err = errno;
  if (std::fclose(f) != 0 && step == nullptr) {
    step = "close";
    err = errno;
  }
  if (step == nullptr) return true;
  *error = path + ": " + step + " failed: " + Reason(err);
  return false;
}

}  // namespace moe
