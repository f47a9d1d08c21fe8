#!/usr/bin/env bash
# The MoE exchange measured and modelled on this machine (a manual tool, not a CTest entry):
# moe_comm_bench's sweep on 1 node x 4 ranks and 1 node x 2 ranks, then on 2 network-namespace
# nodes x 2 ranks (tests/multinode/netns_cluster.sh: TCP between the nodes, shared memory inside
# one; skipped with a note where namespaces cannot be made), then moe_comm_model's fit, held-out
# validation and projection, and the plots (launcher/plot_comm_sweep.py, needs matplotlib).
#
#   bash tests/bench/comm_sweep.sh OUT_DIR [moe_comm_bench flags...]
# Each point runs 5 warm-up and 30 timed steps: with moe_comm_bench's own default (2 + 8) the
# transfer times came out up to 2.5x those of 5 + 30 on a 2-core machine (the warm-up was not
# over). Flags given here win.
# Environment: BUILD_DIR (default build; moe_comm_bench and moe_comm_model are used as they are).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="$(mkdir -p "${1:?usage: comm_sweep.sh OUT_DIR [flags]}" && cd "$1" && pwd)"
shift
set -- --warmup=5 --iters=30 "$@"
BUILD_DIR="$(cd "${BUILD_DIR:-$ROOT/build}" && pwd)"
BENCH="$BUILD_DIR/launcher/moe_comm_bench"
MODEL="$BUILD_DIR/launcher/moe_comm_model"
if [ ! -x "$BENCH" ] || [ ! -x "$MODEL" ]; then
  echo "build moe_comm_bench and moe_comm_model first (in $BUILD_DIR)"
  exit 1
fi
source "$ROOT/cmake/mpi_env.sh"
MPI=(mpirun --oversubscribe --bind-to none --wdir "$ROOT"
     -x OPENBLAS_NUM_THREADS -x OMP_NUM_THREADS)

if [ -n "${NETNS_HOSTFILE:-}" ]; then  # run again inside the cluster (below): 2 nodes x 2 slots
  read -r -a CLUSTER_ARGS <<<"$NETNS_MPIRUN_ARGS"
  timeout 600 "${MPI[@]}" --hostfile "$NETNS_HOSTFILE" "${CLUSTER_ARGS[@]}" "$BENCH" --ep=2,4 \
    --csv="$OUT/two_nodes_np4.csv" "$@"
  exit
fi

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(uptime)"
for np in 4 2; do
  echo "## 1 node x $np ranks"
  ep=2; [ "$np" = 4 ] && ep=2,4
  timeout 600 "${MPI[@]}" -np "$np" "$BENCH" --ep="$ep" --csv="$OUT/one_node_np$np.csv" "$@"
done
CSVS="$OUT/one_node_np4.csv,$OUT/one_node_np2.csv"

echo "## 2 nodes x 2 ranks (network namespaces)"
if bash "$ROOT/tests/multinode/netns_cluster.sh" check; then
  NETNS_CLUSTER=moebench NETNS_SUBNET=10.77.7 NETNS_NODES=2 NETNS_SLOTS=2 \
    bash "$ROOT/tests/multinode/netns_cluster.sh" run bash "${BASH_SOURCE[0]}" "$OUT" "$@"
  CSVS="$CSVS,$OUT/two_nodes_np4.csv"
else
  echo "# note: no network namespaces here; the inter-node level is not fitted"
fi

echo "## moe_comm_model"
"$MODEL" --csv="$CSVS"
"$MODEL" --project --vmoe_tiny_config="$ROOT/launcher/configs/vmoe_tiny.pbtxt"
# Debian's python3-matplotlib lives under /usr/bin/python3 (another python3 may come first).
PY=""
for p in python3 /usr/bin/python3; do
  if "$p" -c 'import matplotlib' 2>/dev/null; then PY="$p"; break; fi
done
if [ -n "$PY" ]; then
  IFS=, read -r -a CSV_LIST <<<"$CSVS"
  "$PY" "$ROOT/launcher/plot_comm_sweep.py" "${CSV_LIST[@]}" --out_dir="$OUT"
else
  echo "# note: no matplotlib (apt-get install python3-matplotlib); no plots"
fi
