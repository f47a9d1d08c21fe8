#include "comm/process_groups.h"

#include <glog/logging.h>

namespace moe {

std::string LayoutError(int world_size, int world_rank, int ep_size) {
  if (world_size <= 0) return "world size " + std::to_string(world_size) + ": must be >= 1";
  if (world_rank < 0 || world_rank >= world_size)
    return "world rank " + std::to_string(world_rank) + ": must be in [0, " +
           std::to_string(world_size) + ")";
  if (ep_size <= 0)
    return "parallel.ep_size=" + std::to_string(ep_size) + ": must be >= 1 (world size " +
           std::to_string(world_size) + ")";
  if (world_size % ep_size != 0)
    return "parallel.ep_size=" + std::to_string(ep_size) + ": the world size " +
           std::to_string(world_size) + " is not a multiple of it";
  return "";
}

bool MakeLayout(int world_size, int world_rank, int ep_size, ProcessGroupLayout* layout,
                std::string* error) {
  const std::string err = LayoutError(world_size, world_rank, ep_size);
  if (!err.empty()) {
    if (error != nullptr) *error = err;
    return false;
  }
  layout->world_size = world_size;
  layout->world_rank = world_rank;
  layout->ep_size = ep_size;
  layout->dp_size = world_size / ep_size;
  layout->ep_rank = world_rank % ep_size;
  layout->dp_rank = world_rank / ep_size;
  return true;
}

ProcessGroupLayout MakeLayout(int world_size, int world_rank, int ep_size) {
  ProcessGroupLayout layout;
  std::string error;
  CHECK(MakeLayout(world_size, world_rank, ep_size, &layout, &error)) << error;
  return layout;
}

int ExpertGroupMemberWorldRank(const ProcessGroupLayout& l, int group_rank) {
  CHECK(group_rank >= 0 && group_rank < l.ep_size) << "EP group rank " << group_rank;
  return l.dp_rank * l.ep_size + group_rank;
}

int DataGroupMemberWorldRank(const ProcessGroupLayout& l, int group_rank) {
  CHECK(group_rank >= 0 && group_rank < l.dp_size) << "DP group rank " << group_rank;
  return group_rank * l.ep_size + l.ep_rank;
}

int GroupRank(const ProcessGroupLayout& l, GroupKind g) {
  switch (g) {
    case GroupKind::kWorld: return l.world_rank;
    case GroupKind::kExpert: return l.ep_rank;
    case GroupKind::kData: return l.dp_rank;
  }
  LOG(FATAL) << "unknown GroupKind " << static_cast<int>(g);
  return -1;
}

int GroupSize(const ProcessGroupLayout& l, GroupKind g) {
  switch (g) {
    case GroupKind::kWorld: return l.world_size;
    case GroupKind::kExpert: return l.ep_size;
    case GroupKind::kData: return l.dp_size;
  }
  LOG(FATAL) << "unknown GroupKind " << static_cast<int>(g);
  return -1;
}

}  // namespace moe
