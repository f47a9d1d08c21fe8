// Proof that NCCL is linked: its runtime version, which needs no GPU.
#pragma once

#include <string>

namespace moe {

// "NCCL 2.28.9 (built against headers 2.28.9)"; the runtime part is "unavailable (...)" if
// ncclGetVersion fails.
std::string NcclVersionString();

}  // namespace moe
