#!/usr/bin/env bash
# The collective watchdog: a rank that stops answering (SIGSTOP) in a 4-rank run ends the whole
# job within 30 s of the stop, with --collective_timeout_s=10: one message naming the step, the
# MoE layer and phase, and the silent rank; exit code 5; no rank left behind.
set -euo pipefail
source "$(dirname "$0")/common.sh"

# pid of world rank $1 of the job whose log dir is $2 (Open MPI puts the rank in the environment).
rank_pid() {
  local pid
  for pid in $(pgrep -f "$TRAIN .*--log_dir=$2"); do
    if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$1"; then
      echo "$pid"; return
    fi
  done
}

# stall_case NAME OVERRIDE STOP_RANK: starts the job, waits for step 5, stops STOP_RANK.
stall_case() {
  local name="$1" override="$2" victim="$3" logs="$WORK/logs-$1"
  OUT="$WORK/$name.out"
  timeout --kill-after=10 180 mpirun "${MPIRUN_FLAGS[@]}" -np 4 "$TRAIN" --config="$CONFIG" \
    --log_dir="$logs" --override="$override" --collective_timeout_s=10 >"$OUT" 2>&1 &
  local job=$!
  local waited=0
  until grep -qE "step ([5-9]|[1-9][0-9]+)/" "$OUT" 2>/dev/null; do
    sleep 0.5; waited=$((waited + 1))
    if [ $waited -gt 240 ]; then fail "$name" "training never reached step 5"; kill "$job"; return; fi
  done
  local pid; pid=$(rank_pid "$victim" "$logs")
  [ -n "$pid" ] || { fail "$name" "rank $victim not found"; kill "$job"; return; }
  kill -STOP "$pid"
  local t0=$SECONDS
  set +e; wait "$job"; RC=$?; set -e
  local took=$((SECONDS - t0))
  kill -KILL "$pid" 2>/dev/null || true  # only if something failed to end it
  if [ "$RC" -ne 5 ]; then fail "$name" "exit $RC after ${took}s, want 5"; return; fi
  if [ "$took" -gt 30 ]; then fail "$name" "took ${took}s after the stop, want <= 30"; return; fi
  if ! grep -qE "collective timeout: rank [0-9]+ waited [0-9]+ s .* in step [0-9]+" "$OUT"; then
    fail "$name" "no timeout message naming the step"; return; fi
  if ! grep -qE "did not answer.*: rank $victim\$" "$OUT"; then
    fail "$name" "message does not name rank $victim as silent"; return; fi
  # Where the others waited: whichever collective the stop caught them in (an all-to-all, the
  # gradient all-reduce, the step statistics, or the step loop's per-step failure agreement or
  # its after-step flag agreement on a failed metrics write and a pending stop).
  if ! grep -qE "block[0-9]+\.moe a2a_|gradient|statistics|waiting [0-9]+ s in (failure|flag) agreement" "$OUT"; then
    fail "$name" "message names no phase"; return; fi
  if [ "$(grep -c "collective timeout:" "$OUT")" -ne 1 ]; then
    fail "$name" "not exactly one timeout message"; return; fi
  if pgrep -f "$TRAIN .*--log_dir=$logs" >/dev/null; then fail "$name" "a rank is still running"; return; fi
  pass "$name: job ended ${took}s after rank $victim stopped (exit $RC)"
}

stall_case ep4 'steps: 400 log_every: 1' 2
stall_case ep2_dp2 'steps: 400 log_every: 1 parallel { ep_size: 2 }' 3
finish
