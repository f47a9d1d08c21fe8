#include "comm/mpi_abort.h"

#include <glog/logging.h>
#include <mpi.h>

#include <cstdio>
#include <cstdlib>

namespace moe {
namespace {

// The MPI calls here deliberately bypass MPI_CHECK: we are already inside glog's fatal path, and
// a failing check would re-enter it.
[[noreturn]] void MpiAbortOnFatal() {
  google::FlushLogFiles(google::GLOG_INFO);
  std::fflush(stdout);
  std::fflush(stderr);
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, 1);
  std::abort();
}

}  // namespace

void InstallMpiAbortOnFatal() { google::InstallFailureFunction(&MpiAbortOnFatal); }

}  // namespace moe
