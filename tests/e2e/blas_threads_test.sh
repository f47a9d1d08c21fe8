#!/usr/bin/env bash
# moe_train takes its BLAS thread count from the environment (OPENBLAS_NUM_THREADS, then
# OMP_NUM_THREADS, else 1 per rank), says so on rank 0 at start-up, and refuses a value that is
# no count with exit 2 and a message naming the variable and the value. Rank 0 also names the
# OpenBLAS kernels it runs and whether OPENBLAS_CORETYPE chose them.
set -euo pipefail
source "$(dirname "$0")/common.sh"
SMALL='steps: 2 log_every: 1 data { eval_images: 32 } parallel { ep_size: 2 }'

check_log() {  # NAME REGEX
  if [ "$RC" -ne 0 ]; then fail "$1" "exit $RC"; return; fi
  if ! grep -qE -- "$2" "$OUT"; then fail "$1" "output lacks '$2'"; return; fi
  pass "$1"
}

run_job default 120 -np 2 -x OPENBLAS_NUM_THREADS= -x OMP_NUM_THREADS= -x OPENBLAS_CORETYPE= \
  "$TRAIN" --config="$CONFIG" --override="$SMALL" --log_dir="$WORK/logs"
check_log default "BLAS threads per rank: 1 \(default\)"
check_log default_kernels "BLAS kernels: [A-Za-z0-9]+ \(OpenBLAS's pick for this CPU\)"

# Prescott (SSE3): a kernel set every x86-64 CPU can run.
run_job kernels_forced 120 -np 2 -x OPENBLAS_CORETYPE=Prescott "$TRAIN" \
  --config="$CONFIG" --override="$SMALL" --log_dir="$WORK/logs"
check_log kernels_forced "BLAS kernels: Prescott \(OPENBLAS_CORETYPE=Prescott\)"

run_job kernels_unknown 120 -np 2 -x OPENBLAS_CORETYPE=NoSuchCore "$TRAIN" \
  --config="$CONFIG" --override="$SMALL" --log_dir="$WORK/logs"
check_log kernels_unknown \
  "BLAS kernels: [A-Za-z0-9]+ \(OPENBLAS_CORETYPE=NoSuchCore not taken: OpenBLAS knows no such core"

run_job openblas_two 120 -np 2 -x OPENBLAS_NUM_THREADS=2 "$TRAIN" \
  --config="$CONFIG" --override="$SMALL" --log_dir="$WORK/logs"
check_log openblas_two "BLAS threads per rank: 2 \(OPENBLAS_NUM_THREADS=2\)"

run_job omp_three 120 -np 2 -x OPENBLAS_NUM_THREADS= -x OMP_NUM_THREADS=3 "$TRAIN" \
  --config="$CONFIG" --override="$SMALL" --log_dir="$WORK/logs"
check_log omp_three "BLAS threads per rank: 3 \(OMP_NUM_THREADS=3\)"

run_job bad_value 120 -np 2 -x OPENBLAS_NUM_THREADS=two "$TRAIN" \
  --config="$CONFIG" --override="$SMALL" --log_dir="$WORK/logs"
if [ "$RC" -ne 2 ]; then
  fail bad_value "exit $RC, want 2"
elif ! grep -q "config error: OPENBLAS_NUM_THREADS=two: must be an integer in \[1, 1024\]" \
    "$OUT"; then
  fail bad_value "message lacks the variable and value"
else
  pass bad_value
fi
finish
