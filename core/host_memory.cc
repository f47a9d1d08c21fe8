#include "core/host_memory.h"

#include <malloc.h>

namespace moe {

bool KeepFreedHostMemory(std::string* error) {
  // glibc caps M_MMAP_THRESHOLD at 4 MiB x sizeof(long) = 32 MiB on 64-bit systems; blocks above
  // it are still mapped one by one (they are rare and large enough to amortise the faults).
  constexpr int kMmapThreshold = 32 << 20;
  constexpr int kTrimThreshold = 1 << 30;  // give memory back only past 1 GiB free at the top
  if (mallopt(M_MMAP_THRESHOLD, kMmapThreshold) != 1) {
    *error = "mallopt(M_MMAP_THRESHOLD, " + std::to_string(kMmapThreshold) + ") refused";
    return false;
  }
  if (mallopt(M_TRIM_THRESHOLD, kTrimThreshold) != 1) {
    *error = "mallopt(M_TRIM_THRESHOLD, " + std::to_string(kTrimThreshold) + ") refused";
    return false;
  }
  return true;
}

}  // namespace moe
