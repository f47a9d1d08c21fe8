// One moe_comm_bench point measured for real: a MoeLayer of the point's shape on an
// MpiCommunicator over the world with the point's EP size (device kCUDA: on the GPU, over an
// NcclCommunicator built from it, launcher/device_comm.h), warm-up then timed Forward+Backward
// steps under a Profiler, reduced over the ranks into one SweepRow (the same on every rank).
#pragma once

#include <mpi.h>

#include "comm/clock_sync.h"
#include "core/tensor.h"
#include "launcher/comm_sweep_csv.h"
#include "launcher/comm_sweep_points.h"

namespace moe {

// Where the ranks are: from MPI_Comm_split_type(SHARED), or simulated nodes of a given size.
struct NodeLayout {
  int ranks_per_node = 0, nodes = 0;
  bool uneven = false;  // the machine's nodes hold different numbers of ranks (min is reported)
};
// ranks_per_node_flag > 0: that many consecutive ranks per node (must divide the world size,
// CHECKed by the caller); 0: the machine's nodes. Collective over `world`.
NodeLayout DetectNodeLayout(MPI_Comm world, int ranks_per_node_flag);

// The host (shared-memory node, whatever --ranks_per_node simulates) where ranks outnumber
// online cores the most: its ranks and cores (ranks <= cores everywhere: that host's figures with
// the smallest surplus). Collective over `world`. Ranks that share a core wait for it inside every
// exchange, so skew and transfer then include scheduling, not only the link.
struct HostCrowding {
  int ranks = 0;
  int cores = 0;
};
HostCrowding MostCrowdedHost(MPI_Comm world);

struct MeasureOptions {
  int warmup = 2, iters = 5;
  int ranks_per_node = 0;   // DispatcherOptions::ranks_per_node
  int pipeline_chunks = 2;  // DispatcherOptions::pipeline_chunks
  // kCUDA: BindRankToGpu must have run; the point's dispatcher must be CudaDispatcherAvailable.
  Device device = Device::kCPU;
  // This rank's offset to rank 0's clock (SyncClockToRoot, once per run), for the skew /
  // transfer split of each exchange.
  ClockOffset clock;
};
// Collective over MPI_COMM_WORLD: every rank calls it with the same point.
SweepRow MeasurePoint(const SweepPoint& point, const NodeLayout& layout,
                      const MeasureOptions& options);

}  // namespace moe
