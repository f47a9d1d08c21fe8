#include "launcher/checkpoint_files.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace moe {
namespace {

bool Fail(const std::string& path, const char* step, std::string* error) {
  *error = path + ": " + step + " failed: " + std::strerror(errno);
  return false;
}

}  // namespace

uint64_t Fnv1a64(const void* data, size_t bytes) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < bytes; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

bool WriteFileDurably(const std::string& path, const void* data, size_t bytes, std::string* error) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Fail(path, "open", error);
  const char* p = static_cast<const char*>(data);
  size_t done = 0;
  while (done < bytes) {
    const ssize_t n = write(fd, p + done, bytes - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0) errno = EIO;
      Fail(path, "write", error);
      close(fd);
      return false;
    }
    done += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0) {
    Fail(path, "fsync", error);
    close(fd);
    return false;
  }
  if (close(fd) != 0) return Fail(path, "close", error);
  return true;
}

bool SyncDirectory(const std::string& dir, std::string* error) {
  const int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Fail(dir, "open (directory)", error);
  if (fsync(fd) != 0) {
    Fail(dir, "fsync (directory)", error);
    close(fd);
    return false;
  }
  if (close(fd) != 0) return Fail(dir, "close (directory)", error);
  return true;
}

bool ReadFileRange(const std::string& path, uint64_t offset, uint64_t bytes, void* out,
                   std::string* error) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Fail(path, "open", error);
  char* p = static_cast<char*>(out);
  uint64_t done = 0;
  while (done < bytes) {
    const ssize_t n = pread(fd, p + done, bytes - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      *error = path + ": " + (n == 0 ? "file ends at byte " + std::to_string(offset + done) +
                                           ", before the " + std::to_string(bytes) +
                                           " bytes at offset " + std::to_string(offset)
                                     : std::string("read failed: ") + std::strerror(errno));
      close(fd);
      return false;
    }
    done += static_cast<uint64_t>(n);
  }
  close(fd);
  return true;
}

bool ReadWholeFile(const std::string& path, std::string* out, std::string* error) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return Fail(path, "stat", error);
  out->resize(static_cast<size_t>(st.st_size));
  return ReadFileRange(path, 0, out->size(), out->data(), error);
}

bool ListDirectory(const std::string& dir, std::vector<std::string>* names, std::string* error) {
  names->clear();
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return Fail(dir, "opendir", error);
  while (const dirent* e = readdir(d)) {
    const std::string n = e->d_name;
    if (n != "." && n != "..") names->push_back(n);
  }
  closedir(d);
  return true;
}

bool RemoveFlatDirectory(const std::string& dir, std::string* error) {
  std::vector<std::string> names;
  if (!ListDirectory(dir, &names, error)) return false;
  for (const std::string& n : names)
    if (unlink((dir + "/" + n).c_str()) != 0) return Fail(dir + "/" + n, "unlink", error);
  if (rmdir(dir.c_str()) != 0) return Fail(dir, "rmdir", error);
  return true;
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace moe
