// Where a world rank sits in the EP x DP grid. Pure arithmetic, no MPI: the launcher validates the
// layout before any communicator exists, and unit tests check it without mpirun.
//
// World rank r has ep_rank = r % ep_size (its position inside its EP group, the ep_size
// consecutive ranks that together hold all experts) and dp_rank = r / ep_size (which replica of
// the experts it holds). EP group d = world ranks {d*ep_size, ..., d*ep_size + ep_size - 1};
// DP group e = world ranks {e, e + ep_size, e + 2*ep_size, ...}.
#pragma once

#include <string>

#include "comm/communicator.h"

namespace moe {

struct ProcessGroupLayout {
  int world_size = 1;
  int world_rank = 0;
  int ep_size = 1;
  int dp_size = 1;
  int ep_rank = 0;
  int dp_rank = 0;
};

// Error reporting: returns "" when (world_size, world_rank, ep_size) is a valid layout, else one
// message naming the field and values, e.g.
//   "parallel.ep_size=3: the world size 4 is not a multiple of it".
std::string LayoutError(int world_size, int world_rank, int ep_size);

// Returns false and sets *error (LayoutError's message) on invalid input; *layout is then left
// untouched. On success fills *layout and returns true.
bool MakeLayout(int world_size, int world_rank, int ep_size, ProcessGroupLayout* layout,
                std::string* error);

// For callers that validated already: CHECK-fails with LayoutError's message on invalid input.
ProcessGroupLayout MakeLayout(int world_size, int world_rank, int ep_size);

// World rank of the member at position `group_rank` of this rank's EP / DP group.
int ExpertGroupMemberWorldRank(const ProcessGroupLayout& l, int group_rank);
// This rank's position in, and the size of, group g: what every Communicator's Rank/Size return.
int GroupRank(const ProcessGroupLayout& l, GroupKind g);
int GroupSize(const ProcessGroupLayout& l, GroupKind g);
int DataGroupMemberWorldRank(const ProcessGroupLayout& l, int group_rank);

}  // namespace moe
