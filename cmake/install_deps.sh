#!/usr/bin/env bash
# Installs the Debian packages moe-ep needs, only those missing. Safe to run repeatedly.
set -euo pipefail
PACKAGES=(build-essential cmake ninja-build pkg-config
          libopenmpi-dev openmpi-bin
          libprotobuf-dev protobuf-compiler
          libgflags-dev libgoogle-glog-dev
          libopenblas-dev zlib1g-dev libgtest-dev
          dataset-fashion-mnist
          ${EXTRA_PACKAGES:-})  # e.g. the test suite's python3-matplotlib (tests/run_tests.sh)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[install_deps] installing: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
