#include "models/moe/moe_backend.h"

#include <glog/logging.h>

#include "models/moe/cpu_token_dispatcher.h"
#include "models/moe/expert_compute.h"
#include "models/moe/hierarchical_token_dispatcher.h"
#include "models/moe/host_routing_planner.h"
#include "models/moe/pipelined_token_dispatcher.h"

namespace moe {

namespace {

std::unique_ptr<TokenDispatcher> MakeCpuTokenDispatcher(const MoeLayerView& layer) {
  switch (layer.dispatch.kind) {
    case DispatcherKind::kFlat:
      return std::make_unique<CpuTokenDispatcher>(layer.name, layer.comm, layer.opt.num_experts,
                                                  layer.opt.dim);
    case DispatcherKind::kHierarchical:
      return std::make_unique<HierarchicalTokenDispatcher>(
          layer.name, layer.comm, layer.opt.num_experts, layer.opt.dim,
          layer.dispatch.ranks_per_node);
    case DispatcherKind::kPipelined:
      return std::make_unique<PipelinedTokenDispatcher>(layer.name, layer.comm,
                                                        layer.opt.num_experts, layer.opt.dim,
                                                        layer.dispatch.pipeline_chunks);
  }
  LOG(FATAL) << layer.name << ": dispatcher " << DispatcherKindName(layer.dispatch.kind)
             << " is not available on the host path";
  return nullptr;
}

}  // namespace

bool HostDispatcherAvailable(DispatcherKind kind) {
  switch (kind) {
    case DispatcherKind::kFlat:
    case DispatcherKind::kHierarchical:
    case DispatcherKind::kPipelined:
      return true;
  }
  return false;
}

std::unique_ptr<MoeBackend> MakeMoeBackend(Device device, const MoeLayerView& layer) {
  if (device == Device::kCUDA) return MakeCudaMoeBackend(layer);
  auto b = std::make_unique<MoeBackend>();
  b->device = Device::kCPU;
  b->dispatcher = MakeCpuTokenDispatcher(layer);
  b->planner = std::make_unique<HostRoutingPlanner>(layer);
  return b;
}

std::unique_ptr<ExpertCompute> MakeExpertCompute(Device device, void* stream) {
  if (device == Device::kCUDA) return MakeCudaExpertCompute(stream);
  return MakeCpuExpertCompute();
}

}  // namespace moe
