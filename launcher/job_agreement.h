// Failures every rank must agree on (a config error, a data error, a failed write on rank 0, a
// checkpoint that cannot be trusted): the ranks learn together whether any failed, the lowest
// failing rank prints its message once, and every rank exits with the same code. Errors nobody
// can agree on (a CHECK, a dying rank) go through MPI_Abort instead (comm/mpi_abort.h).
#pragma once

#include <string>

namespace moe {

class CollectiveWatchdog;

// The program name that prefixes messages ("moe_train: rank 2: ..."); a string literal.
void SetJobProgramName(const char* program);
// Once the job's MpiCommunicator exists, its watchdog also guards these agreements, so a rank
// that stopped answering cannot hang them. Before that, they are plain blocking all-reduces.
void SetJobWatchdog(CollectiveWatchdog* watchdog);

// Collective over MPI_COMM_WORLD. Returns only when no rank failed; otherwise the lowest failing
// rank prints "PROGRAM: rank R: message" (and logs it), and all ranks finalize MPI and exit(code).
void FailTogetherIf(bool failed, const std::string& message, int code);

// Collective: the lowest world rank for which `mine` is true, or -1 when none is.
int LowestRankWhere(bool mine);
// Collective: the largest value of `mine` over the world.
int MaxOverWorld(int mine);

}  // namespace moe
