#include "models/moe/hierarchical_token_dispatcher.h"

namespace moe {

HierarchicalTokenDispatcher::HierarchicalTokenDispatcher(const std::string& layer,
                                                         Communicator* comm, int num_experts,
                                                         int dim, int ranks_per_node)
    : two_level_(comm, comm->SplitExpertGroupByNode(ranks_per_node)),
      flat_(layer, &two_level_, num_experts, dim) {}

}  // namespace moe
