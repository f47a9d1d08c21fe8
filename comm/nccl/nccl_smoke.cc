#include "comm/nccl/nccl_smoke.h"

#include <nccl.h>

#include <string>

namespace moe {

namespace {
// Since NCCL 2.9 the code is major*10000 + minor*100 + patch; before, major*1000 + minor*100 +
// patch.
std::string DecodeVersion(int code) {
  int major, minor, patch;
  if (code >= 10000) {
    major = code / 10000;
    minor = (code % 10000) / 100;
    patch = code % 100;
  } else {
    major = code / 1000;
    minor = (code % 1000) / 100;
    patch = code % 100;
  }
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
}
}  // namespace

std::string NcclVersionString() {
  int code = 0;
  const ncclResult_t st = ncclGetVersion(&code);
  const std::string headers = std::to_string(NCCL_MAJOR) + "." + std::to_string(NCCL_MINOR) +
                              "." + std::to_string(NCCL_PATCH);
  const std::string runtime = st == ncclSuccess
                                  ? DecodeVersion(code)
                                  : std::string("unavailable (") + ncclGetErrorString(st) + ")";
  return "NCCL " + runtime + " (built against headers " + headers + ")";
}

}  // namespace moe
