// The metrics writer loses nothing in silence: /dev/full is refused at Open, a write that fails
// later (the reader of a pipe went away) is kept with the step it happened after, and the
// records themselves are unchanged JSON lines.
#include "launcher/metrics_writer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <fstream>
#include <sstream>

namespace moe {
namespace {

TEST(MetricsWriter, RefusesAFullDeviceAtOpen) {
  MetricsWriter w;
  std::string error;
  EXPECT_FALSE(w.Open("/dev/full", &error));
  EXPECT_EQ(error, "cannot write (No space left on device)");
  EXPECT_FALSE(w.Open("/nonexistent-dir/m.jsonl", &error));
  EXPECT_EQ(error, "cannot open for writing (No such file or directory)");
}

TEST(MetricsWriter, EmptyPathWritesNothingAndSucceeds) {
  MetricsWriter w;
  std::string error;
  EXPECT_TRUE(w.Open("", &error));
  w.WriteEval(3, 0.5);
  EXPECT_TRUE(w.Close());
}

TEST(MetricsWriter, WritesJsonLinesWithoutTheProbe) {
  const std::string path = ::testing::TempDir() + "/metrics_writer_test.jsonl";
  MetricsWriter w;
  std::string error;
  ASSERT_TRUE(w.Open(path, &error)) << error;
  StepStats s;
  s.loss = 2.5;
  s.learning_rate = 0.001;
  s.tokens_per_expert = {{3, 4}};
  s.layer_dropped_fraction = {0.25};
  s.layer_capacity_use = {0.75};
  w.WriteStep(0, s);
  w.WriteEval(1, 0.125);
  w.WriteObject("{\"summary\": {}}");
  ASSERT_TRUE(w.Close()) << w.error();
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  EXPECT_EQ(
      ss.str(),
      "{\"step\": 0, \"loss\": 2.5, \"aux_loss\": 0, \"accuracy\": 0, \"dropped_fraction\": 0, "
      "\"capacity_use\": 0, \"grad_norm\": 0, \"lr\": 0.001, \"tokens_per_expert\": [[3, 4]], "
      "\"layer_dropped_fraction\": [0.25], \"layer_capacity_use\": [0.75]}\n"
      "{\"step\": 1, \"eval_accuracy\": 0.125}\n"
      "{\"summary\": {}}\n");
  std::remove(path.c_str());
}

TEST(MetricsWriter, AWriteThatFailsLaterIsKeptWithItsStep) {
  std::signal(SIGPIPE, SIG_IGN);  // as moe_train does: a closed pipe is EPIPE, not a dead process
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  MetricsWriter w;
  std::string error;
  ASSERT_TRUE(w.Open("/dev/fd/" + std::to_string(fds[1]), &error)) << error;
  close(fds[1]);
  StepStats s;
  for (int step = 0; step < 3; ++step) w.WriteStep(step, s);
  EXPECT_TRUE(w.ok()) << w.error();
  close(fds[0]);  // the reader goes away
  w.WriteStep(3, s);
  EXPECT_FALSE(w.ok());
  EXPECT_EQ(w.error(), "write failed after step 4: Broken pipe");
  w.WriteEval(5, 0.5);  // later records are dropped, the first error stays
  EXPECT_EQ(w.error(), "write failed after step 4: Broken pipe");
  EXPECT_FALSE(w.Close());
}

}  // namespace
}  // namespace moe
