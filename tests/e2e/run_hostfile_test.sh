#!/usr/bin/env bash
# launcher/run.sh with mpirun options (no namespaces needed): a hostfile naming `localhost
# slots=4` and no NP trains on 4 ranks (mpirun arguments before `--`, trainer flags after it;
# relative paths are the caller's, though the ranks start in the repository root); MPIRUN_ARGS
# with `localhost slots=2` and no `--` (every argument goes to moe_train, as before) trains on 2;
# NP together with an mpirun process count is refused before anything starts.
set -euo pipefail
source "$(dirname "$0")/common.sh" "$1" "$2"
# seconds_since is new in common.sh; this test also runs against a common.sh without it.
declare -F seconds_since >/dev/null ||
  seconds_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
RUN_SH="$SRC_DIR/launcher/run.sh"
unset NP MPIRUN_ARGS LOG_DIR METRICS_OUT CONFIG
TRAIN_FLAGS=(--steps=20 "--override=data { eval_images: 256 }")

# launcher NAME LIMIT run.sh-args... : run.sh from $WORK (so relative paths are $WORK's), its
# default logs and metrics in $WORK/NAME (run.sh makes that folder); RC, OUT, ELAPSED as run_job.
launcher() {
  local name="$1" limit="$2"; shift 2
  OUT="$WORK/$name.out"
  local t0
  t0=$(date +%s.%N)
  set +e
  (cd "$WORK" && SKIP_BUILD=1 BUILD_DIR="$BUILD_DIR" LOG_DIR="$WORK/$name/logs" \
    METRICS_OUT="$WORK/$name/metrics.jsonl" timeout --kill-after=10 "$limit" bash "$RUN_SH" "$@") >"$OUT" 2>&1
  RC=$?
  set -e
  ELAPSED=$(seconds_since "$t0")
}
# ranks_logged DIR: how many rank log files DIR holds, each with its "rank R of W" line.
ranks_logged() { { grep -l "rank [0-9]* of [0-9]*:" "$1"/moe_train.rank*.* 2>/dev/null || true; } | wc -l; }

# 1. A hostfile gives the slots; relative --log_dir/--metrics_out are taken from the caller's
# directory ($WORK), not from the ranks' (the repository root).
printf 'localhost slots=4\n' >"$WORK/hosts4"
launcher hostfile4 180 --hostfile hosts4 -- "${TRAIN_FLAGS[@]}" --log_dir=rel_logs --metrics_out=rel_logs/m.jsonl
n=$(ranks_logged "$WORK/rel_logs")
if [ "$RC" -eq 0 ] && [ "$n" -eq 4 ] && grep -q "step 20/20  loss [0-9]" "$OUT" &&
   grep -q "summary: .* ranks=4 " "$OUT" && grep -q '"step": 19,' "$WORK/rel_logs/m.jsonl" &&
   grep -q -- "--log_dir=$WORK/rel_logs " "$OUT"; then
  pass "hostfile 'localhost slots=4', no NP: 4 ranks trained in ${ELAPSED}s, logs and metrics under the caller's directory"
else
  fail "hostfile slots=4" "exit $RC, $n rank logs in $WORK/rel_logs (want exit 0, 4 logs, a loss, ranks=4, metrics)"
fi
if [ -e "$SRC_DIR/rel_logs" ]; then
  fail "relative paths" "run.sh wrote $SRC_DIR/rel_logs (the ranks' directory, not the caller's)"
fi

# 2. MPIRUN_ARGS and no `--`: every argument goes to moe_train (today's behaviour).
printf 'localhost slots=2\n' >"$WORK/hosts2"
# (vmoe_tiny's ep_size is 4: 2 ranks need ep_size 2.)
MPIRUN_ARGS="--hostfile $WORK/hosts2" launcher mpirun_args2 180 --steps=20 \
  "--override=data { eval_images: 256 } parallel { ep_size: 2 }"
n=$(ranks_logged "$WORK/mpirun_args2/logs")
if [ "$RC" -eq 0 ] && [ "$n" -eq 2 ] && grep -q "summary: .* ranks=2 " "$OUT"; then
  pass "MPIRUN_ARGS='--hostfile <localhost slots=2>' without '--': 2 ranks trained in ${ELAPSED}s"
else
  fail "MPIRUN_ARGS hostfile slots=2" "exit $RC, $n rank logs (want exit 0, 2 logs, ranks=2)"
fi

# 3. Two process counts: refused up front, with a message naming both.
NP=2 launcher two_counts 30 -np 4 -- "${TRAIN_FLAGS[@]}"
if [ "$RC" -eq 2 ] && grep -q "NP=2 and a process count" "$OUT" && ! grep -q "^\[run.sh\] mpirun" "$OUT"; then
  pass "NP=2 with mpirun's -np 4: refused (exit 2) before mpirun"
else
  fail "two counts" "exit $RC (want 2 and a message naming NP and the mpirun count)"
fi

if ! no_rank_left; then fail "leftovers" "a rank of this test outlived mpirun"; fi
finish
