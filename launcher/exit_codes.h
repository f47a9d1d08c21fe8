// The exit codes of moe_train and superclass_tool, in one place so the launcher, the tools, the
// tests and README.md's table agree. Every rank of a job ends with the same code: the failure is
// agreed on over the world first, or MPI_Abort ends them all (1 after a CHECK, 5 from the
// collective watchdog).
#pragma once

#include "comm/collective_watchdog.h"  // kExitCollectiveTimeout

namespace moe {

constexpr int kExitOk = 0;
// A CHECK or LOG(FATAL) on any rank: MPI_Abort ends the whole job (comm/mpi_abort.h).
constexpr int kExitInternal = 1;
// Bad config, flag or output path, found before training starts.
constexpr int kExitConfig = 2;
// A data file is missing or malformed.
constexpr int kExitData = 3;
// The loss became NaN or infinite.
constexpr int kExitNumerics = 4;
// 5 (kExitCollectiveTimeout): a collective did not complete within --collective_timeout_s.
// Defined next to the watchdog that ends the job with it (comm/collective_watchdog.h, included
// above): comm/ sits below launcher/ and cannot include this file.
// An output (metrics, trace, heatmap, super-class file) could not be written after training
// started.
constexpr int kExitOutput = 6;
static_assert(kExitCollectiveTimeout == 5, "README.md's table says 5");
// A checkpoint cannot be written or trusted (launcher/checkpoint.h): a checksum mismatch, a
// missing shard, another model, another number of experts, --resume with nothing to resume.
constexpr int kExitCheckpoint = 7;
// Stopped by signal N (SIGINT, SIGTERM, SIGUSR1): the rank exits with 128 + N, as a shell reports
// it (after saving a checkpoint when the stop was graceful, launcher/stop_signals.h).
constexpr int kExitSignalBase = 128;

}  // namespace moe
