// NCCL error check: fatal (glog) with file, line, the call as written and ncclGetErrorString,
// plus NCCL's last error message (ncclGetLastError) which usually names the failing peer/transport.
#pragma once

#include <glog/logging.h>
#include <nccl.h>

#define NCCL_CHECK(call)                                                                    \
  do {                                                                                      \
    const ncclResult_t moe_nccl_status_ = (call);                                           \
    if (moe_nccl_status_ != ncclSuccess) {                                                  \
      LOG(FATAL) << "NCCL error at " << __FILE__ << ":" << __LINE__ << ": " << #call        \
                 << " -> " << ncclGetErrorString(moe_nccl_status_) << " (last error: "      \
                 << ncclGetLastError(nullptr) << ")";                                       \
    }                                                                                       \
  } while (0)
