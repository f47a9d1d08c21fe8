#include "launcher/job_agreement.h"

#include <glog/logging.h>
#include <mpi.h>

#include <climits>
#include <cstdio>
#include <cstdlib>

#include "comm/collective_watchdog.h"

namespace moe {
namespace {

const char* g_program = "moe";
CollectiveWatchdog* g_watchdog = nullptr;

// One int all-reduce over the world, through the watchdog when there is one.
int AllReduceInt(int mine, MPI_Op op, const char* what) {
  int out = 0;
  if (g_watchdog == nullptr) {
    MPI_Allreduce(&mine, &out, 1, MPI_INT, op, MPI_COMM_WORLD);
    return out;
  }
  MPI_Request req;
  MPI_Iallreduce(&mine, &out, 1, MPI_INT, op, MPI_COMM_WORLD, &req);
  g_watchdog->Wait(
      [&req] {
        int done = 0;
        MPI_Test(&req, &done, MPI_STATUS_IGNORE);
        return done != 0;
      },
      what);
  return out;
}

}  // namespace

void SetJobProgramName(const char* program) { g_program = program; }
void SetJobWatchdog(CollectiveWatchdog* watchdog) { g_watchdog = watchdog; }

int LowestRankWhere(bool mine) {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const int lowest = AllReduceInt(mine ? rank : INT_MAX, MPI_MIN, "failure agreement (world)");
  return lowest == INT_MAX ? -1 : lowest;
}

int MaxOverWorld(int mine) { return AllReduceInt(mine, MPI_MAX, "flag agreement (world)"); }

void FailTogetherIf(bool failed, const std::string& message, int code) {
  const int lowest = LowestRankWhere(failed);
  if (lowest < 0) return;
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank == lowest) {
    fprintf(stderr, "%s: rank %d: %s\n", g_program, rank, message.c_str());
    fflush(stderr);
    FLAGS_alsologtostderr = false;  // already printed once, plainly; the log file gets it too
    FLAGS_stderrthreshold = google::GLOG_FATAL;
    LOG(ERROR) << message;
  }
  google::FlushLogFiles(google::GLOG_INFO);
  MPI_Barrier(MPI_COMM_WORLD);
  MPI_Finalize();
  std::exit(code);
}

}  // namespace moe
