#!/usr/bin/env bash
# Peer benchmark: moe-ep's whole vmoe_tiny training step against the same model in PyTorch
# (tests/bench/torch_vmoe_reference.py), on real Fashion-MNIST, CPU only, in ONE invocation,
# interleaved A/B/A/B so that a drift in the machine's speed hits both sides alike:
#   1 rank, 1 BLAS thread        vs torch, 1 thread
#   1 rank, OPENBLAS_NUM_THREADS=2 vs torch, 2 threads (moe_train honours the variable only once
#                                  it stops forcing one BLAS thread: until then it is 1 thread)
#   2 ranks (EP 2), 1 thread each vs torch, 2 threads
# Every setting trains the same global batch of 32 images (4 routing groups of 8 images); with
# 2 ranks each rank takes 16. moe-ep's images/s is its summary line's (training steps only: the
# final evaluation, cut to 1000 test images, comes after the clock stops; it does include the
# first step); torch's is measured over STEPS steps after WARMUP untimed ones. The torch script
# sets its own OMP_NUM_THREADS / OPENBLAS_NUM_THREADS and OMP_WAIT_POLICY=PASSIVE (see its
# header) whatever cmake/mpi_env.sh exported for the ranks.
#
#   bash tests/bench/peer_bench.sh                 # STEPS=200, REPS=2
#   STEPS=100 REPS=3 BUILD_DIR=build_cpu SKIP_BUILD=1 bash tests/bench/peer_bench.sh
# Environment: STEPS (200), REPS (2: A/B pairs per setting), WARMUP (torch's untimed steps, 10),
# BUILD_DIR (build), SKIP_BUILD=1 (use BUILD_DIR's moe_train as it is), OUT_DIR (logs; default
# a temporary folder, removed unless KEEP=1). python3-torch is installed with apt-get if missing:
# it is needed by this benchmark only.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
STEPS="${STEPS:-200}"
REPS="${REPS:-2}"
WARMUP="${WARMUP:-10}"
PY="${PYTHON:-/usr/bin/python3}"
CONFIG="$ROOT/launcher/configs/vmoe_tiny.pbtxt"
note() { echo "[peer_bench] $*" >&2; }

if ! "$PY" -c 'import torch, numpy' 2>/dev/null; then
  note "installing python3-torch and python3-numpy (Debian packages) for the PyTorch side"
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    python3-torch python3-numpy >&2
fi
[ "${SKIP_BUILD:-0}" = 1 ] || BUILD_DIR="$BUILD_DIR" BUILD_TARGETS=moe_train \
  bash "$ROOT/cmake/build.sh" >&2
source "$ROOT/cmake/mpi_env.sh"
TRAIN="$BUILD_DIR/launcher/moe_train"
[ -x "$TRAIN" ] || { note "no moe_train in $BUILD_DIR/launcher"; exit 2; }
if [ -z "${OUT_DIR:-}" ]; then
  OUT_DIR="$(mktemp -d)"
  [ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$OUT_DIR"' EXIT
fi
mkdir -p "$OUT_DIR"
cd "$ROOT"

# setting name | moe ranks | moe BLAS threads | torch threads
SETTINGS=(
  "1 rank, 1 thread vs torch 1 thread|1|1|1"
  "1 rank, OPENBLAS_NUM_THREADS=2 vs torch 2 threads|1|2|2"
  "2 ranks (EP 2, 1 thread each) vs torch 2 threads|2|1|2"
)

# moe_ep RANKS THREADS LOG: one moe_train run; prints its summary's images_per_s.
moe_ep() {
  local np="$1" threads="$2" log="$3"
  local ovr="parallel { ep_size: $np } data { batch_per_rank: $((32 / np)) eval_images: 1000 }"
  OPENBLAS_NUM_THREADS="$threads" mpirun -np "$np" "${MPIRUN_FLAGS[@]}" "$TRAIN" \
    --config="$CONFIG" --steps="$STEPS" --override="$ovr" --log_dir="$log.logs" \
    --metrics_out="$log.jsonl" >"$log" 2>&1 \
    || { note "moe_train failed, see $log"; tail -n 20 "$log" >&2; exit 1; }
  grep -o 'summary: .*' "$log" | tail -n 1 | tr ' ' '\n' | sed -n 's/^images_per_s=//p'
}

# torch_ref THREADS LOG: one PyTorch run; prints its images_per_s.
torch_ref() {
  local threads="$1" log="$2"
  "$PY" "$ROOT/tests/bench/torch_vmoe_reference.py" --threads "$threads" --steps "$STEPS" \
    --warmup "$WARMUP" --eval_images 1000 >"$log" 2>&1 \
    || { note "torch reference failed, see $log"; tail -n 20 "$log" >&2; exit 1; }
  tr ' ' '\n' <"$log" | sed -n 's/^images_per_s=//p'
}

median() { tr ' ' '\n' <<<"$*" | sed '/^$/d' | sort -g | awk '{v[NR] = $1} END {
  if (NR % 2) printf "%.1f", v[(NR + 1) / 2]; else printf "%.1f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# The torch side's routing maths (capacity, slots, BPR) against a per-token loop first: a
# benchmark of wrong maths would be worthless.
"$PY" "$ROOT/tests/bench/torch_moe_reference.py" --selftest --device cpu >"$OUT_DIR/selftest.txt" \
  || { note "routing selftest failed:"; cat "$OUT_DIR/selftest.txt" >&2; exit 1; }
echo "torch routing maths: $(tail -n 1 "$OUT_DIR/selftest.txt")"
echo "load before: $(uptime)"
declare -A MOE TORCH
for rep in $(seq 1 "$REPS"); do
  for i in "${!SETTINGS[@]}"; do
    IFS='|' read -r name np blas tthreads <<<"${SETTINGS[$i]}"
    a=$(moe_ep "$np" "$blas" "$OUT_DIR/moe.$i.$rep.txt")
    b=$(torch_ref "$tthreads" "$OUT_DIR/torch.$i.$rep.txt")
    note "rep $rep, $name: moe-ep $a images/s, torch $b images/s"
    MOE[$i]+="$a " TORCH[$i]+="$b "
  done
done
echo "load after: $(uptime)"
echo
echo "vmoe_tiny training, global batch 32, $STEPS steps, median of $REPS interleaved runs" \
  "(the runs in brackets); ratio = moe-ep / torch"
echo
echo "| setting | moe-ep images/s | torch images/s | ratio |"
echo "| --- | --- | --- | --- |"
for i in "${!SETTINGS[@]}"; do
  IFS='|' read -r name _ <<<"${SETTINGS[$i]}"
  a=$(median ${MOE[$i]}) b=$(median ${TORCH[$i]})
  echo "| $name | $a (${MOE[$i]% }) | $b (${TORCH[$i]% }) |" \
    "$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2f", a / b}') |"
done
echo
# The two implementations at init: parameter counts, and the loss of step 0 (ln 10 = 2.30 for a
# uniform prediction; both use the same initialisation scheme, not the same numbers).
echo "reference check (setting 1, run 1):"
grep -h -o 'torch_vmoe: .*' "$OUT_DIR"/torch.0.1.txt | sed 's/^/  /'
grep -h -o 'summary: .*' "$OUT_DIR"/moe.0.1.txt | sed 's/^/  moe-ep /'
head -n 1 "$OUT_DIR"/moe.0.1.txt.jsonl | grep -o '"loss": [^,]*' | sed 's/^/  moe-ep step 0 /'
