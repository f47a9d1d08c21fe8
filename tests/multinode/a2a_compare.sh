#!/usr/bin/env bash
# What crossing nodes costs the all-to-alls: trains vmoe_tiny (4 ranks, EP 4) through
# launcher/run.sh on 2 namespace nodes x 2 ranks (TCP between the nodes over a veth bridge,
# shared memory within one) and on 1 namespace node x 4 ranks (shared memory only), REPEATS times
# each, alternating, and prints the median over the runs of each all-to-all phase's mean ms per
# step (the communication profile table every run ends with). On a machine shared with other
# work the numbers swing with the load: each run's line shows it (images_per_s).
#
#   bash tests/multinode/a2a_compare.sh [STEPS=100] [REPEATS=3]
# Environment: BUILD_DIR (default build; its moe_train is used as it is), NETNS_* as for
# netns_cluster.sh (default cluster "moecmp" on 10.77.8.0/24). Root only (network namespaces).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
STEPS="${1:-100}"
REPEATS="${2:-3}"
export NETNS_CLUSTER="${NETNS_CLUSTER:-moecmp}" NETNS_SUBNET="${NETNS_SUBNET:-10.77.8}"
export NETNS_NODES=2 NETNS_SLOTS=2
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
PHASES="a2a_dispatch a2a_combine a2a_combine_bwd a2a_dispatch_bwd"

if [ -z "${NETNS_HOSTFILE:-}" ]; then
  # Not yet inside the cluster: make it, run this script again inside, remove it.
  exec bash "$HERE/netns_cluster.sh" run bash "${BASH_SOURCE[0]}" "$STEPS" "$REPEATS"
fi
read -r -a CLUSTER_MPI_ARGS <<<"$NETNS_MPIRUN_ARGS"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
unset NP MPIRUN_ARGS

phase_ms() { awk -F'|' -v p="$2" '{ gsub(/ /, "", $1) } $1 == p { gsub(/ /, "", $3); print $3 }' "$1" | tail -n 1; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

train() {  # train NAME mpirun-args... : one run, its output in $WORK/NAME.out
  local name="$1"; shift
  SKIP_BUILD=1 BUILD_DIR="$BUILD_DIR" LOG_DIR="$WORK/$name" METRICS_OUT="$WORK/$name/metrics.jsonl" \
    timeout 600 bash "$ROOT/launcher/run.sh" "$@" "${CLUSTER_MPI_ARGS[@]}" -- --steps="$STEPS" \
    "--override=data { eval_images: 256 }" >"$WORK/$name.out" 2>&1 ||
    { echo "a2a_compare: run $name failed:"; tail -n 20 "$WORK/$name.out"; exit 1; }
  local sum=0 p
  for p in $PHASES; do sum=$(awk -v s="$sum" -v a="$(phase_ms "$WORK/$name.out" "$p")" 'BEGIN { print s + a }'); done
  printf '  %-12s all-to-alls %7.3f ms/step  %s\n' "$name" "$sum" \
    "$(grep -ho "images_per_s=[0-9.]*" "$WORK/$name.out" | tail -n 1)"
}

NODE0="$NETNS_CLUSTER-node0"
for ((r = 1; r <= REPEATS; r++)); do
  train "two_nodes_$r" --hostfile "$NETNS_HOSTFILE"
  train "one_node_$r" --host "$NODE0:4"
done

echo
echo "all-to-all phases, mean ms per step over the 4 ranks, median of $REPEATS runs of $STEPS steps:"
printf '%-18s %14s %14s %8s\n' "phase" "2 nodes x 2" "1 node x 4" "ratio"
t2=0; t1=0
for p in $PHASES; do
  a=$(for ((r = 1; r <= REPEATS; r++)); do phase_ms "$WORK/two_nodes_$r.out" "$p"; done | median)
  b=$(for ((r = 1; r <= REPEATS; r++)); do phase_ms "$WORK/one_node_$r.out" "$p"; done | median)
  printf '%-18s %14s %14s %8s\n' "$p" "$a" "$b" "$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.1fx", a / b }')"
  t2=$(awk -v s="$t2" -v a="$a" 'BEGIN { print s + a }'); t1=$(awk -v s="$t1" -v b="$b" 'BEGIN { print s + b }')
done
printf '%-18s %14.3f %14.3f %8s\n' "all four" "$t2" "$t1" "$(awk -v a="$t2" -v b="$t1" 'BEGIN { printf "%.1fx", a / b }')"
