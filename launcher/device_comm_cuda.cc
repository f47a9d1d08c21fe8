// The CUDA half of device_comm.h (a build without the CUDA path links device_comm_cpu_only.cc).
#include <cuda_runtime_api.h>
#include <glog/logging.h>

#include "comm/nccl/nccl_communicator.h"
#include "core/kernels/cuda/cuda_check.h"
#include "launcher/device_comm.h"

namespace moe {

namespace {

// Members destroyed in reverse order: NCCL before its stream.
class NcclDeviceComm : public DeviceComm {
 public:
  explicit NcclDeviceComm(MpiCommunicator& mpi) {
    CUDA_CHECK(cudaStreamCreate(&stream_));  // blocking, not NonBlocking: see the header
    nccl_ = std::make_unique<NcclCommunicator>(mpi, stream_);
    LOG_IF(INFO, mpi.Rank(GroupKind::kWorld) == 0)
        << "moe_train: NCCL communicators ready (world, expert, data)";
  }
  ~NcclDeviceComm() override {
    nccl_.reset();
    if (stream_ != nullptr) cudaStreamDestroy(stream_);  // at exit: nothing left to report to
  }
  Communicator* get() override { return nccl_.get(); }

 private:
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<NcclCommunicator> nccl_;
};

}  // namespace

void BindRankToGpu(bool allow_shared_gpu) {
  const DeviceBinding bind = BindDeviceForRank(MPI_COMM_WORLD, allow_shared_gpu);
  LOG(INFO) << "device cuda:" << bind.device << " (local rank " << bind.local_rank << " of "
            << bind.local_size << " on this host"
            << (bind.shared_gpu ? ", GPU shared with other ranks: testing only" : "") << ")";
}

std::unique_ptr<DeviceComm> MakeDeviceComm(MpiCommunicator& mpi) {
  return std::make_unique<NcclDeviceComm>(mpi);
}

}  // namespace moe
