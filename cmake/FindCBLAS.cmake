# Finds a CBLAS implementation (OpenBLAS from Debian's libopenblas-dev).
# Defines the imported target CBLAS::CBLAS. OpenBLAS is preferred because it lets us pin
# one BLAS thread per MPI rank (openblas_set_num_threads).
find_path(CBLAS_INCLUDE_DIR NAMES cblas.h
  PATH_SUFFIXES openblas x86_64-linux-gnu/openblas-pthread x86_64-linux-gnu)
find_library(CBLAS_LIBRARY NAMES openblas cblas blas)
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(CBLAS DEFAULT_MSG CBLAS_LIBRARY CBLAS_INCLUDE_DIR)
if(CBLAS_FOUND AND NOT TARGET CBLAS::CBLAS)
  add_library(CBLAS::CBLAS UNKNOWN IMPORTED)
  set_target_properties(CBLAS::CBLAS PROPERTIES
    IMPORTED_LOCATION "${CBLAS_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${CBLAS_INCLUDE_DIR}")
endif()
