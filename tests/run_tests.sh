#!/usr/bin/env bash
# The whole test suite: installs missing Debian packages, builds everything (CUDA units are
# compiled too when nvcc exists), and runs every test through CTest: unit tests, multi-rank tests
# on 4 real MPI ranks, and end-to-end runs of the launcher.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
# python3-matplotlib: the suite also checks the result plots (tests/e2e/plots_test.sh), which
# would otherwise be skipped; training itself never needs it.
EXTRA_PACKAGES="python3-matplotlib ${EXTRA_PACKAGES:-}" BUILD_DIR="$BUILD_DIR" \
  bash "$ROOT/cmake/build.sh"
source "$ROOT/cmake/mpi_env.sh"
cd "$BUILD_DIR"
ctest --output-on-failure -j "${CTEST_JOBS:-1}" "$@"
