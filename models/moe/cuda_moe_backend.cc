// The CUDA half of moe_backend.h: a layer's CUDA planner and dispatcher over one shared
// CudaMoeContext.
#include "models/moe/moe_backend.h"

#include <glog/logging.h>

#include <memory>
#include <utility>

#include "models/moe/cuda_device_topk_planner.h"
#include "models/moe/cuda_host_routing_planner.h"
#include "models/moe/cuda_pipelined_token_dispatcher.h"
#include "models/moe/cuda_token_dispatcher.h"
#include "models/moe/cuda_two_level_exchange.h"

namespace moe {

namespace {

// The layer's device context. FLAT and PIPELINED: over the job's communicator.
// HIERARCHICAL: the same CudaTokenDispatcher as FLAT, over a communicator whose expert
// all-to-all-v takes two levels (cuda_two_level_exchange.h), so its output is FLAT's bit for
// bit. With a host-memory communicator (ep_size 1, no NCCL) every exchange is a local copy and
// there is nothing to route in levels.
std::shared_ptr<CudaMoeContext> MakeCudaContext(const MoeLayerView& layer, int ep_size) {
  const DispatcherOptions& d = layer.dispatch;
  CHECK(CudaDispatcherAvailable(d.kind))
      << layer.name << ": dispatcher " << DispatcherKindName(d.kind)
      << " is not available on the CUDA path";
  if (d.kind != DispatcherKind::kHierarchical || !layer.comm->works_on_device())
    return std::make_shared<CudaMoeContext>(layer.name, layer.comm, ep_size);
  // 0: the machine's nodes, from the host MPI split (collective over the expert group).
  const int ranks_per_node =
      d.ranks_per_node > 0 ? d.ranks_per_node : layer.comm->MachineRanksPerNode();
  auto two_level =
      std::make_unique<CudaTwoLevelExpertCommunicator>(layer.name, layer.comm, ranks_per_node);
  auto cuda = std::make_shared<CudaMoeContext>(layer.name, two_level.get(), ep_size);
  cuda->owned_comm = std::move(two_level);
  return cuda;
}

}  // namespace

bool CudaDispatcherAvailable(DispatcherKind kind) {
  switch (kind) {
    case DispatcherKind::kFlat:
    case DispatcherKind::kHierarchical:
    case DispatcherKind::kPipelined:
      return true;
  }
  return false;
}

namespace {

std::unique_ptr<TokenDispatcher> MakeCudaTokenDispatcher(const MoeLayerView& layer,
                                                         std::shared_ptr<CudaMoeContext> cuda,
                                                         int ep_size) {
  const MoeLayerOptions& o = layer.opt;
  if (layer.dispatch.kind == DispatcherKind::kPipelined)
    return std::make_unique<CudaPipelinedTokenDispatcher>(layer.name, std::move(cuda),
                                                          o.num_experts, ep_size, o.dim,
                                                          layer.dispatch.pipeline_chunks);
  return std::make_unique<CudaTokenDispatcher>(layer.name, std::move(cuda), o.num_experts,
                                               ep_size, o.dim);
}

}  // namespace

std::unique_ptr<MoeBackend> MakeCudaMoeBackend(const MoeLayerView& layer) {
  const MoeLayerOptions& o = layer.opt;
  // Config validation refuses these with device "cuda"; the device path has none of them yet.
  CHECK(!o.external_decision) << layer.name << ": an external decision is host-path only";
  CHECK(o.noise == RouterNoise::kFixed && o.balance_sq_weight == 0.f)
      << layer.name << ": learned softplus router noise and the balance-squared loss are not "
      << "supported on the CUDA path yet";
  const int ep_size = layer.comm->Size(GroupKind::kExpert);
  auto cuda = MakeCudaContext(layer, ep_size);
  auto b = std::make_unique<MoeBackend>();
  b->device = Device::kCUDA;
  b->dispatcher = MakeCudaTokenDispatcher(layer, cuda, ep_size);
  if (layer.rule.DecidesOnDevice(o)) {
    b->planner = std::make_unique<CudaDeviceTopKPlanner>(layer, cuda);
  } else {
    b->planner = std::make_unique<CudaHostRoutingPlanner>(layer, cuda);
  }
  return b;
}

}  // namespace moe
