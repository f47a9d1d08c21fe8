// SIGTERM and SIGINT end a rank with one line saying where it was, instead of silence:
//   "moe_train: rank 0: stopped by SIGTERM during step 51 of 1500"
// and exit status 128 + N (143 for SIGTERM, 130 for SIGINT), as a shell reports a signal.
//
// Graceful stop: with SetGracefulStop(true) (moe_train does it when --checkpoint_dir is set), and
// for SIGUSR1 always, the handler only records the signal; the training loop agrees on it over the
// world after the current step, saves a checkpoint, and exits 128 + N. A second SIGTERM or SIGINT
// ends the rank at once as above. Under mpirun prefer SIGUSR1 (`kill -USR1 <mpirun pid>`):
// mpirun forwards it at once and waits, while its own SIGTERM reaches the ranks a second late and
// is followed by SIGKILL a second after that (below).
//
// Under Open MPI 4.1, `mpirun` that receives SIGTERM or SIGINT sends the ranks SIGCONT, then
// SIGTERM about a second later, then SIGKILL to any rank still alive after another second, and
// itself exits with status 1 (measured: README.md "Exit codes"). The handler answers the
// forwarded SIGTERM, so every rank prints its line and ends before the SIGKILL.
//
// The handler only reads lock-free atomics and calls write(2) and _exit(2), which are
// async-signal-safe; it does not flush logs or call MPI.
#pragma once

#include <cstdint>

namespace moe {

enum class StopPhase { kStartUp, kTraining, kFinishing };

// `program` must outlive the process (a string literal). Call once, after MPI_Init (Open MPI
// installs handlers of its own there).
void InstallStopSignalHandlers(const char* program, int rank);
// Where the rank is, for the message: the 0-based step now running (printed 1-based, like the
// progress lines) of `total_steps`.
void SetStopSignalStep(int64_t step, int64_t total_steps);
void SetStopSignalPhase(StopPhase phase);
void SetGracefulStop(bool on);
// The signal a graceful stop was asked with (SIGTERM, SIGINT, SIGUSR1), or 0.
int PendingStopSignal();
// "SIGTERM", "SIGINT", "SIGUSR1" (else "a signal"); a string literal, so async-signal-safe.
const char* StopSignalName(int sig);

}  // namespace moe
