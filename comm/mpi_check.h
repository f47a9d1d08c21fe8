// MPI_CHECK(call): every MPI call in comm/ goes through it. Our communicators set
// MPI_ERRORS_RETURN, so a failing call returns here instead of inside MPI, and the fatal message
// names the call site, the call text and MPI's own explanation of the error code.
#pragma once

#include <glog/logging.h>
#include <mpi.h>

#include <string>

namespace moe {
namespace internal {

inline std::string MpiErrorString(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) return "unknown MPI error";
  return std::string(text, len);
}

}  // namespace internal
}  // namespace moe

// LogMessageFatal takes the caller's file and line, so glog's prefix points at the failing call
// too, not at this header.
#define MPI_CHECK(call)                                                                      \
  do {                                                                                       \
    const int moe_mpi_check_rc_ = (call);                                                    \
    if (moe_mpi_check_rc_ != MPI_SUCCESS) {                                                  \
      google::LogMessageFatal(__FILE__, __LINE__).stream()                                   \
          << "MPI call failed at " << __FILE__ << ":" << __LINE__ << ": " << #call << ": "   \
          << ::moe::internal::MpiErrorString(moe_mpi_check_rc_) << " (error code "           \
          << moe_mpi_check_rc_ << ")";                                                       \
    }                                                                                        \
  } while (0)
