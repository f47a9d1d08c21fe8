#include "launcher/stop_signals.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <initializer_list>

#include "launcher/exit_codes.h"

namespace moe {
namespace {

const char* g_program = "moe_train";
std::atomic<int> g_rank{0};
std::atomic<int> g_phase{static_cast<int>(StopPhase::kStartUp)};
std::atomic<int64_t> g_step{0}, g_total{0};
static_assert(std::atomic<int64_t>::is_always_lock_free, "the signal handler reads it");

// A fixed buffer filled without allocation or stdio (neither is async-signal-safe).
struct Line {
  char text[256];
  size_t size = 0;
  void Add(const char* s) {
    for (; *s != '\0' && size < sizeof(text); ++s) text[size++] = *s;
  }
  void Add(int64_t v) {
    char digits[24];
    int n = 0;
    const bool negative = v < 0;
    uint64_t u = negative ? 0 - static_cast<uint64_t>(v) : static_cast<uint64_t>(v);
    do {
      digits[n++] = static_cast<char>('0' + u % 10);
      u /= 10;
    } while (u != 0);
    if (negative) Add("-");
    while (n > 0 && size < sizeof(text)) text[size++] = digits[--n];
  }
};

std::atomic<bool> g_graceful{false};
std::atomic<int> g_pending{0};


// Graceful: remember the signal for the training loop, and say so once (rank 0).
void RecordStopRequest(int sig) {
  g_pending = sig;
  if (g_rank.load() != 0) return;
  Line line;
  line.Add(g_program);
  line.Add(": rank 0: ");
  line.Add(StopSignalName(sig));
  line.Add(" received: stopping after the current step (a second SIGTERM or SIGINT stops at once)\n");
  ssize_t ignored = write(STDERR_FILENO, line.text, line.size);
  (void)ignored;
}

void OnStopSignal(int sig) {
  if (sig == SIGUSR1 || (g_graceful.load() && g_pending.load() == 0)) {
    if (g_pending.load() == 0) RecordStopRequest(sig);
    return;
  }
  Line line;
  line.Add(g_program);
  line.Add(": rank ");
  line.Add(static_cast<int64_t>(g_rank.load()));
  line.Add(": stopped by ");
  line.Add(StopSignalName(sig));
  line.Add(" ");
  switch (static_cast<StopPhase>(g_phase.load())) {
    case StopPhase::kStartUp: line.Add("during start-up (before step 1)"); break;
    case StopPhase::kTraining:
      line.Add("during step ");
      line.Add(g_step.load());
      line.Add(" of ");
      line.Add(g_total.load());
      break;
    case StopPhase::kFinishing:
      line.Add("after training (final evaluation and outputs; ");
      line.Add(g_total.load());
      line.Add(" steps done)");
      break;
  }
  line.Add("\n");
  ssize_t ignored = write(STDERR_FILENO, line.text, line.size);
  (void)ignored;  // nothing more can be done about a failing stderr inside a handler
  _exit(kExitSignalBase + sig);
}

}  // namespace

void InstallStopSignalHandlers(const char* program, int rank) {
  g_program = program;
  g_rank = rank;
  struct sigaction sa;
  std::memset(&sa, 0, sizeof(sa));
  sa.sa_handler = OnStopSignal;
  sigfillset(&sa.sa_mask);  // one line per rank, even if both signals arrive
  for (int sig : {SIGTERM, SIGINT, SIGUSR1}) sigaction(sig, &sa, nullptr);
}

const char* StopSignalName(int sig) {
  return sig == SIGTERM ? "SIGTERM" : sig == SIGINT ? "SIGINT" : sig == SIGUSR1 ? "SIGUSR1" : "a signal";
}

void SetGracefulStop(bool on) { g_graceful = on; }

int PendingStopSignal() { return g_pending.load(); }

void SetStopSignalStep(int64_t step, int64_t total_steps) {
  g_total = total_steps;
  g_step = step + 1;
  g_phase = static_cast<int>(StopPhase::kTraining);
}

void SetStopSignalPhase(StopPhase phase) { g_phase = static_cast<int>(phase); }

}  // namespace moe
