#!/usr/bin/env bash
# The main job: expert-parallel V-MoE training on Fashion-MNIST over CPU ranks under mpirun.
# Installs missing Debian packages and builds as needed, then trains, evaluates on the 10,000
# test images and prints the communication profile.
#
#   bash launcher/run.sh                                   # vmoe_tiny, 4 ranks
#   NP=2 CONFIG=launcher/configs/vit_tiny.pbtxt bash launcher/run.sh --steps=200
# Extra arguments go to moe_train (--steps, --override, --metrics_out, --trace_dir, ...).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
BUILD_DIR="$BUILD_DIR" BUILD_TARGETS=moe_train bash "$ROOT/cmake/build.sh"
source "$ROOT/cmake/mpi_env.sh"
NP="${NP:-4}"
CONFIG="${CONFIG:-$ROOT/launcher/configs/vmoe_tiny.pbtxt}"
cd "$ROOT"
exec mpirun -np "$NP" "${MPIRUN_FLAGS[@]}" "$BUILD_DIR/launcher/moe_train" \
  --config="$CONFIG" --log_dir="${LOG_DIR:-$ROOT/logs}" --metrics_out="${METRICS_OUT:-$ROOT/logs/metrics.jsonl}" "$@"
