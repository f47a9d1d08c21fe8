// Makes any glog FATAL (a failed CHECK, LOG(FATAL), MPI_CHECK) on one rank end the whole MPI job.
// Without it the failing process calls abort() and its peers may sit forever in the next
// collective, waiting for a rank that is gone (the "no hangs" invariant:
// README.md, "Faults: nothing hangs").
#pragma once

namespace moe {

// Installs (google::InstallFailureFunction) a failure function that flushes the logs and calls
// MPI_Abort(MPI_COMM_WORLD, 1); before MPI_Init or after MPI_Finalize it falls back to abort().
// glog has already printed the fatal message on the failing rank when it runs. Call once per
// process, after google::InitGoogleLogging.
void InstallMpiAbortOnFatal();

}  // namespace moe
