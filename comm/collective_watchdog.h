// Collective watchdog: no rank waits forever for a peer that stopped answering (README.md,
// "Faults: nothing hangs").
//
// Every collective of MpiCommunicator (and, through it, NcclCommunicator) is started
// non-blocking and finished in CollectiveWatchdog::Wait, which polls it. If it has not completed
// within the timeout, the rank holds a ROLL CALL on a private duplicate of the world
// communicator: it asks every other rank what it is doing. Live ranks answer from inside their
// own Wait (they are polling too), naming their step, phase and operation; a rank that is
// stopped (SIGSTOP), dead, or stuck outside any collective (an endless loop, a hung device) does
// not answer. The lowest rank that answered prints ONE message (the operation, step and phase,
// the ranks that did not answer, and what every other rank is waiting in), then the job ends
// through MPI_Abort with kExitCollectiveTimeout; the device path first aborts its NCCL
// communicators (ncclCommAbort) so no kernel keeps waiting either.
//
// Costs when nothing is wrong: collectives run as their non-blocking MPI variants (MPI_Ialltoallv,
// MPI_Iallreduce, ...) completed by polling MPI_Test with sched_yield between polls (what Open MPI's
// blocking calls do themselves when ranks outnumber cores), plus one MPI_Iprobe on the private
// communicator every few milliseconds of waiting. On NCCL each collective is followed by a host
// wait on a CUDA event (see nccl_communicator.h).
#pragma once

#include <mpi.h>

#include <array>
#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace moe {

// The exit code of a job ended by the watchdog (launcher/exit_codes.h lists all of them).
constexpr int kExitCollectiveTimeout = 5;

// What this process is doing, for the watchdog's messages. Process-wide and single-threaded, like
// the trainer: the trainer sets the step or stage, layers push a phase around their collectives.
void SetActivityStep(int64_t step);             // "step N"
void SetActivityStage(const std::string& stage);  // e.g. "start-up", "evaluation", "shutdown"
// Pushes `phase` ("block1.moe a2a_dispatch") for the scope's lifetime; phases nest.
class ScopedActivity {
 public:
  explicit ScopedActivity(const std::string& phase);
  ~ScopedActivity();
  ScopedActivity(const ScopedActivity&) = delete;
  ScopedActivity& operator=(const ScopedActivity&) = delete;
};
// "step 50, block1.moe a2a_dispatch" (or "evaluation, ...", "start-up").
std::string DescribeActivity();

class CollectiveWatchdog {
 public:
  // Collective over `world` (duplicates it). timeout_s <= 0 turns the timeout off (Wait still
  // answers roll calls, so other ranks' messages stay complete).
  CollectiveWatchdog(MPI_Comm world, double timeout_s);
  // Frees the private communicator (collective, before MPI_Finalize; nothing after it).
  ~CollectiveWatchdog();
  CollectiveWatchdog(const CollectiveWatchdog&) = delete;
  CollectiveWatchdog& operator=(const CollectiveWatchdog&) = delete;

  // Must be the same on every rank, or the message may come from a rank with a longer timeout.
  void set_timeout(double timeout_s) { timeout_s_ = timeout_s; }
  double timeout() const { return timeout_s_; }

  // Returns once `done()` is true (it must drive progress itself, e.g. MPI_Test). `what` names the
  // operation ("all-to-all-v on the expert group (4 ranks)"). Past the timeout: the roll call,
  // the message, `before_abort` (e.g. ncclCommAbort), then MPI_Abort; it does not return.
  void Wait(const std::function<bool()>& done, const std::string& what,
            const std::function<void()>& before_abort = {});

 private:
  static constexpr int kReplyBytes = 240;
  using Reply = std::array<char, kReplyBytes>;

  void AnswerRollCalls();
  // Asks every rank; returns each one's answer (empty: none within the grace period).
  std::vector<std::string> RollCall(double grace_s);
  [[noreturn]] void TimedOut(const std::string& what, double waited_s,
                             const std::function<void()>& before_abort);

  MPI_Comm roll_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  double timeout_s_;
  // The operation this rank is waiting in, for its answers to other ranks' roll calls.
  std::string waiting_in_;
  double waiting_since_ = 0;
  // The lowest rank whose roll call this rank answered: a rank that timed out too, and prints.
  int lowest_asker_ = 2147483647;
  std::deque<std::pair<Reply, MPI_Request>> replies_in_flight_;
};

}  // namespace moe
