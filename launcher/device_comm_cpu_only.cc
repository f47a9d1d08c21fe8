// device_comm.h in a build without the CUDA path (the build system links this file instead of
// device_comm_cuda.cc). Config validation refuses device "cuda" in such a build before any call.
#include <glog/logging.h>

#include "launcher/device_comm.h"

namespace moe {

void BindRankToGpu(bool) { LOG(FATAL) << "device cuda: this build has no CUDA path"; }

std::unique_ptr<DeviceComm> MakeDeviceComm(MpiCommunicator&) {
  LOG(FATAL) << "device cuda: this build has no CUDA path";
  return nullptr;
}

}  // namespace moe
