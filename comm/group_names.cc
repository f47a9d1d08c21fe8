#include "comm/communicator.h"

namespace moe {

const char* GroupName(GroupKind g) {
  switch (g) {
    case GroupKind::kWorld: return "world";
    case GroupKind::kExpert: return "expert";
    case GroupKind::kData: return "data";
  }
  return "unknown";
}

}  // namespace moe
