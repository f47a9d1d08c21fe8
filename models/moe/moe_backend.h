// The one place an MoE layer's backend is chosen: for the device its input lives on, a routing
// planner (routing_planner.h) and the token dispatcher (token_dispatcher.h) that reads its plans,
// and the expert bank's arithmetic (MakeExpertCompute, expert_compute.h).
//   CPU   HostRoutingPlanner + CpuTokenDispatcher (host memory, MPI)
//   CUDA  CudaDeviceTopKPlanner (plain token top-k on the device) or CudaHostRoutingPlanner (any
//         other rule: decided on the host, plan uploaded) + CudaTokenDispatcher (device memory,
//         NCCL); only in builds with the CUDA path (cuda_moe_backend.cc)
#pragma once

#include <memory>

#include "core/tensor.h"
#include "models/moe/routing_planner.h"
#include "models/moe/token_dispatcher.h"

namespace moe {

struct MoeBackend {
  Device device = Device::kCPU;
  std::unique_ptr<TokenDispatcher> dispatcher;
  std::unique_ptr<RoutingPlanner> planner;
};

std::unique_ptr<MoeBackend> MakeMoeBackend(Device device, const MoeLayerView& layer);
// Whether MakeMoeBackend can make this dispatcher on the host path (tools that sweep dispatchers
// ask first instead of meeting its LOG(FATAL)); kept in step with MakeCpuTokenDispatcher.
bool HostDispatcherAvailable(DispatcherKind kind);
// The same for the CUDA path (cuda_moe_backend.cc); false for every kind in a build without it.
bool CudaDispatcherAvailable(DispatcherKind kind);
// The CUDA half (cuda_moe_backend.cc). A build without the CUDA path links
// moe_backend_cpu_only.cc instead, where it is unreachable: core's BackendFor(kCUDA), the one
// place a device is admitted, refuses, so no tensor ever lives on a device there.
std::unique_ptr<MoeBackend> MakeCudaMoeBackend(const MoeLayerView& layer);

}  // namespace moe
