// The CUDA half of moe_backend.h: a layer's CUDA planner and dispatcher over one shared
// CudaMoeContext.
#include "models/moe/moe_backend.h"

#include <glog/logging.h>

#include "models/moe/cuda_device_topk_planner.h"
#include "models/moe/cuda_host_routing_planner.h"
#include "models/moe/cuda_token_dispatcher.h"

namespace moe {

std::unique_ptr<MoeBackend> MakeCudaMoeBackend(const MoeLayerView& layer) {
  const MoeLayerOptions& o = layer.opt;
  // Config validation refuses these with device "cuda"; the device path has none of them yet.
  CHECK(!o.external_decision) << layer.name << ": an external decision is host-path only";
  CHECK(o.noise == RouterNoise::kFixed && o.balance_sq_weight == 0.f)
      << layer.name << ": learned softplus router noise and the balance-squared loss are not "
      << "supported on the CUDA path yet";
  CHECK(layer.dispatch.kind == DispatcherKind::kFlat)
      << layer.name << ": dispatcher " << DispatcherKindName(layer.dispatch.kind)
      << " is host-path only; the CUDA path exchanges with the flat all-to-all";
  const int ep_size = layer.comm->Size(GroupKind::kExpert);
  auto cuda = std::make_shared<CudaMoeContext>(layer.name, layer.comm, ep_size);
  auto b = std::make_unique<MoeBackend>();
  b->device = Device::kCUDA;
  b->dispatcher =
      std::make_unique<CudaTokenDispatcher>(layer.name, cuda, o.num_experts, ep_size, o.dim);
  if (layer.rule.DecidesOnDevice(o)) {
    b->planner = std::make_unique<CudaDeviceTopKPlanner>(layer, cuda);
  } else {
    b->planner = std::make_unique<CudaHostRoutingPlanner>(layer, cuda);
  }
  return b;
}

}  // namespace moe
