#!/usr/bin/env bash
# moe_comm_bench's --device flag on 2 ranks: a bad value is a config error naming the flag; a
# tiny host sweep (FLAT and HIERARCHICAL) writes one CSV row per point and names its device, and
# each row splits its exchange time into skew and transfer (skew >= 0 by construction, and the
# two are the span between a call's arrival and departure, inside the phase the time covers, so
# skew + transfer <= exchange, up to the CSV's 9 printed digits); on 4 ranks it notes ranks
# that outnumber the host's cores (only where they do); and
# --device=cuda either runs the three dispatchers on the GPU (one CSV row each), or, where
# there is no GPU, ends with a clear message and no table -- "this build has no CUDA path" in a
# build without it.
set -euo pipefail
source "$(dirname "$0")/common.sh" "$1" "$2"
BENCH="$BUILD_DIR/launcher/moe_comm_bench"
TINY=(--tokens=64 --dims=16 --experts=4 --top_k=1 --ep=2 --group_tokens=64 --warmup=0 --iters=1)

run_job bad_device 60 -np 2 "$BENCH" --device=tpu
[ "$RC" -eq 2 ] && grep -q "config error: --device=tpu: must be cpu or cuda" "$OUT" \
  && pass bad_device || fail bad_device "exit $RC, wanted 2 and the flag named"

run_job host 120 -np 2 "$BENCH" "${TINY[@]}" --dispatchers=flat,hierarchical \
  --csv="$WORK/host.csv"
# header + one row per dispatcher
if [ "$RC" -eq 0 ] && grep -q "device cpu" "$OUT" && [ "$(wc -l <"$WORK/host.csv")" -eq 3 ]; then
  pass host_sweep
else
  fail host_sweep "exit $RC; wanted the device in the header and 2 CSV rows"
fi
# Columns by name: a reordered CSV must still check the right ones.
SPLIT_BAD=$(awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i
    if (!("skew_us" in col) || !("transfer_us" in col)) { print "no skew_us, transfer_us"; exit }
    next }
  { x = $col["exchange_us"]; s = $col["skew_us"]; t = $col["transfer_us"]
    if (s < 0 || s + t > x * (1 + 1e-8))
      print "row " NR - 1 ": exchange " x ", skew " s ", transfer " t }' "$WORK/host.csv" 2>&1)
[ -z "$SPLIT_BAD" ] && [ "$(wc -l <"$WORK/host.csv")" -eq 3 ] && pass host_split \
  || fail host_split "wanted skew >= 0 and skew + transfer <= exchange: ${SPLIT_BAD:-no rows}"

# 4 ranks: the sweep names a host where ranks outnumber the cores, and only then.
# getconf, as the bench's sysconf (nproc would read OMP_NUM_THREADS, which mpi_env.sh sets to 1).
CORES=$(getconf _NPROCESSORS_ONLN)
run_job crowded 120 -np 4 "$BENCH" "${TINY[@]}" --csv="$WORK/crowded.csv"
if [ "$CORES" -lt 4 ]; then
  [ "$RC" -eq 0 ] && grep -q "^# note: 4 ranks share $CORES cores on one host" "$OUT" \
    && pass crowded_note || fail crowded_note "exit $RC; wanted the note on $CORES cores"
else
  [ "$RC" -eq 0 ] && ! grep -q "^# note: .* ranks share" "$OUT" \
    && pass uncrowded_no_note || fail uncrowded_no_note "exit $RC; a note on $CORES cores"
fi

run_job cuda 180 -np 2 "$BENCH" "${TINY[@]}" --device=cuda --allow_shared_gpu \
  --dispatchers=flat,hierarchical,pipelined --csv="$WORK/cuda.csv"
COUNT="$BUILD_DIR/tests/gpu_device_count"
if [ ! -x "$COUNT" ]; then  # a build without the CUDA path
  [ "$RC" -eq 2 ] && grep -q "config error: --device=cuda: this build has no CUDA path" "$OUT" \
    && pass cuda_refused || fail cuda_refused "exit $RC, wanted 2 and the reason"
elif "$COUNT" >/dev/null 2>&1; then  # a GPU: the sweep runs there
  if [ "$RC" -eq 0 ] && [ "$(wc -l <"$WORK/cuda.csv")" -eq 4 ]; then
    pass cuda_sweep
  else
    fail cuda_sweep "exit $RC; wanted flat, hierarchical and pipelined rows"
  fi
else  # the CUDA path without a GPU: binding the rank fails, before any table
  [ "$RC" -ne 0 ] && ! grep -q "^flat " "$OUT" && pass cuda_no_gpu \
    || fail cuda_no_gpu "exit $RC, wanted a failure without rows"
fi
finish
