// The job's device-memory communicator: the one place the launcher chooses it. On the CUDA path
// it binds each rank to its GPU and builds an NcclCommunicator over the MPI groups, on a blocking
// stream of its own (the layers run on the legacy default stream, which then orders itself
// against the NCCL work implicitly: launcher/training_session.h); without one there is none.
#pragma once

#include <memory>

#include "comm/communicator.h"
#include "comm/mpi_communicator.h"

namespace moe {

class DeviceComm {
 public:
  virtual ~DeviceComm() = default;
  virtual Communicator* get() = 0;
};

// Binds this rank to GPU local_rank % device_count before any CUDA or NCCL call (a fatal error
// there, e.g. no GPU, ends every rank through MPI_Abort). allow_shared_gpu: testing only, more
// ranks than GPUs on a host. Fatal in a build without the CUDA path.
void BindRankToGpu(bool allow_shared_gpu);

// Collective over mpi's world: every rank builds it, in the same order. Fatal in a build without
// the CUDA path (config validation refuses device "cuda" there first).
std::unique_ptr<DeviceComm> MakeDeviceComm(MpiCommunicator& mpi);

}  // namespace moe
