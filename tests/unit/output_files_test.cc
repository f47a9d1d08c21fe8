// Output paths are checked for real (a directory that takes a new file, a file that takes a
// write), and every writer reports a failed write with the path and the reason. /dev/full stands
// in for a full disk: it opens fine and fails every write with ENOSPC, even for root.
#include "launcher/output_files.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "core/profiler.h"
#include "launcher/png_writer.h"

namespace moe {
namespace {

std::string Fresh(const std::string& name) {
  const std::string path = ::testing::TempDir() + "/output_files_test_" + name;
  std::remove(path.c_str());
  return path;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(CheckOutputDir, CreatesTheFolderAndLeavesNoProbeBehind) {
  const std::string dir = Fresh("dir");
  std::string error;
  ASSERT_TRUE(CheckOutputDir("trace_dir", dir, &error)) << error;
  struct stat st;
  ASSERT_EQ(stat(dir.c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(rmdir(dir.c_str()), 0) << "the probe file was left in the folder";
}

TEST(CheckOutputDir, RefusesWhatIsNotAWritableFolder) {
  std::string error;
  EXPECT_FALSE(CheckOutputDir("trace_dir", "/dev/null", &error));
  EXPECT_EQ(error, "config error: --trace_dir=/dev/null: not a directory");
  EXPECT_FALSE(CheckOutputDir("analytics_dir", "/proc/no_such/dir", &error));
  EXPECT_EQ(error.rfind(
                "config error: --analytics_dir=/proc/no_such/dir: cannot create this folder (", 0),
            0u)
      << error;
  // /proc passes access(W_OK) for root, but no file can be created in it.
  EXPECT_FALSE(CheckOutputDir("log_dir", "/proc", &error));
  EXPECT_EQ(error.rfind("config error: --log_dir=/proc: cannot create a file in this folder (", 0),
            0u)
      << error;
}

TEST(CheckOutputFile, KeepsAnExistingFileAndRemovesANewOne) {
  const std::string existing = Fresh("existing.txt");
  std::ofstream(existing) << "old super-classes\n";
  std::string error;
  ASSERT_TRUE(CheckOutputFile("out", existing, &error)) << error;
  EXPECT_EQ(ReadAll(existing), "old super-classes\n");
  const std::string fresh = Fresh("new.txt");
  ASSERT_TRUE(CheckOutputFile("out", fresh, &error)) << error;
  EXPECT_NE(access(fresh.c_str(), F_OK), 0) << "the check left a file behind";
  std::remove(existing.c_str());
}

TEST(CheckOutputFile, RefusesAFullDeviceAFolderAndAMissingFolder) {
  std::string error;
  EXPECT_FALSE(CheckOutputFile("out", "/dev/full", &error));
  EXPECT_EQ(error, "config error: --out=/dev/full: cannot write (No space left on device)");
  EXPECT_FALSE(CheckOutputFile("out", "/tmp", &error));
  EXPECT_EQ(error, "config error: --out=/tmp: is a directory, not a file");
  EXPECT_FALSE(CheckOutputFile("out", "/nonexistent-dir/x.txt", &error));
  EXPECT_EQ(error,
            "config error: --out=/nonexistent-dir/x.txt: cannot open for writing (No such file or "
            "directory)");
}

TEST(WriteWholeFile, WritesAndReportsEachFailingStep) {
  const std::string path = Fresh("whole.txt");
  std::string error;
  ASSERT_TRUE(WriteWholeFile(path, "abc\n", &error)) << error;
  EXPECT_EQ(ReadAll(path), "abc\n");
  std::remove(path.c_str());
  EXPECT_FALSE(WriteWholeFile("/dev/full", "abc\n", &error));
  EXPECT_EQ(error, "/dev/full: write failed: No space left on device");
  EXPECT_FALSE(WriteWholeFile("/nonexistent-dir/x", "abc\n", &error));
  EXPECT_EQ(error, "/nonexistent-dir/x: open for writing failed: No such file or directory");
}

TEST(FileWriters, EveryWriterReportsAFullDevice) {
  std::string error;
  EXPECT_FALSE(WritePngRgb("/dev/full", 1, 1, {0, 0, 0}, &error));
  EXPECT_EQ(error, "/dev/full: write failed: No space left on device");
  Profiler profiler;
  { ScopedPhase p(&profiler, "router"); }
  error.clear();
  EXPECT_FALSE(profiler.WriteChromeTrace("/dev/full", 0, &error));
  EXPECT_EQ(error, "/dev/full: write failed: No space left on device");
}

}  // namespace
}  // namespace moe
