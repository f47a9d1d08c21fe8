#!/usr/bin/env bash
# Bad input ends the whole job with one clear message naming the field (or flag) and value, the
# exit code of README.md's table, and no rank left running: config errors (every kind of field,
# flags, memory the host does not have, an empty config), unusable output paths (refused before
# training), outputs that fail after training started (exit 6), a missing data file, ranks
# holding different configs, a rank that dies mid-training, a NaN loss, and SIGTERM. Each case
# prints how long the job took to end. ONLY=REGEX runs only the cases whose names match.
set -euo pipefail
source "$(dirname "$0")/common.sh"
SMALL='steps: 3 log_every: 1 data { eval_images: 64 }'
TOOL="$BUILD_DIR/launcher/superclass_tool"

# check_ended NAME EXPECTED_TEXT EXPECTED_RC : judges the job that ended with $RC and $OUT
# (EXPECTED_TEXT: extended regex; EXPECTED_RC: a number or "any" non-zero). With FORBID=REGEX in
# the environment, output matching it fails the case too.
check_ended() {
  local name="$1" text="$2" want_rc="$3"
  if [ "$RC" -eq 0 ]; then fail "$name" "exited 0"; return; fi
  if [ "$RC" -eq 124 ] || [ "$RC" -eq 137 ]; then fail "$name" "hung (timeout)"; return; fi
  if [ "$want_rc" != "any" ] && [ "$RC" -ne "$want_rc" ]; then fail "$name" "exit $RC, want $want_rc"; return; fi
  if ! grep -qE -- "$text" "$OUT"; then fail "$name" "message lacks '$text'"; return; fi
  if [ -n "${FORBID:-}" ] && grep -qE -- "$FORBID" "$OUT"; then fail "$name" "output has '$FORBID'"; return; fi
  if ! no_rank_left; then fail "$name" "a rank is still running"; return; fi
  pass "$name (exit $RC, ended in ${ELAPSED}s)"
}

selected() { [[ -z "${ONLY:-}" || "$1" =~ $ONLY ]]; }

# expect_failure NAME EXPECTED_TEXT EXPECTED_RC mpirun-args...
expect_failure() {
  local name="$1" text="$2" want_rc="$3"; shift 3
  selected "$name" || return 0
  run_job "$name" 180 "$@"
  check_ended "$name" "$text" "$want_rc"
}

# start_job NAME mpirun-args... : runs mpirun in the background (pid in $JOB_PID, output in $OUT)
start_job() {
  local name="$1"; shift
  OUT="$WORK/$name.out"
  : >"$OUT"  # exists before the first wait_for_text looks
  mpirun "${MPIRUN_FLAGS[@]}" "$@" >>"$OUT" 2>&1 &
  JOB_PID=$!
}
# wait_for_text REGEX SECONDS : until $OUT matches (false on timeout)
wait_for_text() {
  local i
  for ((i = 0; i < $2 * 5; ++i)); do
    grep -qE -- "$1" "$OUT" && return 0
    sleep 0.2
  done
  return 1
}
# wait_job SECONDS : waits for the background job (SIGKILL after SECONDS: a hang), sets $RC.
# Polls instead of a background guard, which would keep the output pipe open after the test.
wait_job() {
  local i
  for ((i = 0; i < $1 * 5; ++i)); do
    kill -0 "$JOB_PID" 2>/dev/null || break
    sleep 0.2
  done
  kill -KILL "$JOB_PID" 2>/dev/null || true
  set +e
  wait "$JOB_PID"
  RC=$?
  set -e
}

common=(--config="$CONFIG" --log_dir="$WORK/logs")
expect_failure unknown_field 'num_expert' 2 \
  -np 4 "$TRAIN" "${common[@]}" --override="$SMALL model { moe { num_expert: 8 } }"
expect_failure experts_not_divisible 'model.moe.num_experts=6' 2 \
  -np 4 "$TRAIN" "${common[@]}" --override="$SMALL model { moe { num_experts: 6 } }"
expect_failure top_k_above_experts 'model.moe.top_k=9' 2 \
  -np 4 "$TRAIN" "${common[@]}" --override="$SMALL model { moe { top_k: 9 } }"
expect_failure capacity_factor_zero 'model.moe.capacity_factor_train=0' 2 \
  -np 4 "$TRAIN" "${common[@]}" --override="$SMALL model { moe { capacity_factor_train: 0 } }"
expect_failure ep_size_vs_world 'parallel.ep_size=3' 2 \
  -np 4 "$TRAIN" "${common[@]}" --override="$SMALL parallel { ep_size: 3 }"
expect_failure missing_config_file 'no_such_config.pbtxt' 2 \
  -np 4 "$TRAIN" --config="$WORK/no_such_config.pbtxt" --log_dir="$WORK/logs"

# Values that used to pass in silence or fail the wrong way (a CHECK in AdamW, exit 1).
expect_failure steps_flag_negative 'config error: --steps=-5: must be >= 1' 2 \
  -np 4 "$TRAIN" "${common[@]}" --override="$SMALL" --steps=-5
expect_failure steps_flag_zero 'config error: --steps=0: must be >= 1' 2 \
  -np 4 "$TRAIN" "${common[@]}" --override="$SMALL" --steps=0
expect_failure min_lr_ratio_negative 'config error: optimizer.min_lr_ratio=-5: must be in \[0, 1\]' 2 \
  -np 4 "$TRAIN" "${common[@]}" --override="$SMALL optimizer { min_lr_ratio: -5 }"
expect_failure grad_clip_negative 'config error: optimizer.grad_clip_norm=-1: must be finite and >= 0' 2 \
  -np 4 "$TRAIN" "${common[@]}" --override="$SMALL optimizer { grad_clip_norm: -1 }"
expect_failure weight_decay_negative 'config error: optimizer.weight_decay=-1: must be finite and >= 0' 2 \
  -np 4 "$TRAIN" "${common[@]}" --override="$SMALL optimizer { weight_decay: -1 }"
expect_failure epsilon_zero 'config error: optimizer.epsilon=0: must be finite and > 0' 2 \
  -np 4 "$TRAIN" "${common[@]}" --override="$SMALL optimizer { epsilon: 0 }"
# More memory than any host has: refused before anything is allocated, naming the field. (The
# issue's num_experts 100000 needs 14 GiB per rank, which a large host can hold; 10x cannot fit.)
expect_failure capacity_factor_huge \
  'config error: model.moe.capacity_factor_train=1e\+09: a rank would need about [0-9.]+ PiB.*this host has' 2 \
  -np 4 "$TRAIN" "${common[@]}" --override="$SMALL model { moe { capacity_factor_train: 1e9 } }"
expect_failure num_experts_huge 'config error: model.moe.num_experts=1000000: a rank would need about' 2 \
  -np 4 "$TRAIN" "${common[@]}" --override="$SMALL model { moe { num_experts: 1000000 } }"
: >"$WORK/empty.pbtxt"
printf '# nothing but comments\n\n  # here\n' >"$WORK/comments.pbtxt"
expect_failure empty_config 'config error: --config=.*empty.pbtxt sets no fields' 2 \
  -np 4 "$TRAIN" --config="$WORK/empty.pbtxt" --log_dir="$WORK/logs"
expect_failure comment_only_config 'config error: --config=.*comments.pbtxt sets no fields' 2 \
  -np 4 "$TRAIN" --config="$WORK/comments.pbtxt" --log_dir="$WORK/logs"

# Output paths that cannot be used are refused before training (exit 2).
expect_failure metrics_out_dev_full 'config error: --metrics_out=/dev/full: cannot write \(No space left on device\)' 2 \
  -np 4 "$TRAIN" "${common[@]}" --override="$SMALL" --metrics_out=/dev/full
expect_failure metrics_out_unopenable 'config error: --metrics_out=/nonexistent/m.jsonl: cannot open for writing' 2 \
  -np 4 "$TRAIN" "${common[@]}" --override="$SMALL" --metrics_out=/nonexistent/m.jsonl
touch "$WORK/not_a_dir"
FORBID='COULD NOT CREATE LOGFILE' expect_failure log_dir_not_a_dir \
  "config error: --log_dir=$WORK/not_a_dir: not a directory" 2 \
  -np 4 "$TRAIN" --config="$CONFIG" --log_dir="$WORK/not_a_dir" --override="$SMALL"
expect_failure trace_dir_dev_null 'config error: --trace_dir=/dev/null: not a directory' 2 \
  -np 4 "$TRAIN" "${common[@]}" --override="$SMALL" --trace_dir=/dev/null
expect_failure analytics_dir_dev_null 'config error: --analytics_dir=/dev/null: not a directory' 2 \
  -np 4 "$TRAIN" "${common[@]}" --override="$SMALL" --analytics_dir=/dev/null
expect_failure unwritable_analytics_dir 'analytics_dir=/proc/no_such/dir: cannot create' 2 \
  -np 4 "$TRAIN" "${common[@]}" --override="$SMALL" --analytics_dir=/proc/no_such/dir
expect_failure superclass_out_dev_full 'config error: --out=/dev/full: cannot write \(No space left on device\)' 2 \
  -np 4 "$TOOL" --config="$SRC_DIR/launcher/configs/vit_tiny.pbtxt" --log_dir="$WORK/logs" \
  --steps=2 --out=/dev/full

# Outputs that fail after training started end every rank with exit 6. /dev/full behind a file
# name stands in for a full disk; a pipe whose reader leaves after 2000 bytes for a lost stream.
mkfifo "$WORK/metrics.fifo"
head -c 2000 <>"$WORK/metrics.fifo" >/dev/null &
reader=$!
# The failed write ends the job there, not after the remaining steps.
FORBID='final: test accuracy' expect_failure metrics_write_fails_later \
  'output error: --metrics_out=.*metrics.fifo: write failed after step [0-9]+: Broken pipe' 6 \
  -np 4 "$TRAIN" "${common[@]}" --override="steps: 40 log_every: 1 data { eval_images: 64 }" \
  --metrics_out="$WORK/metrics.fifo"
kill "$reader" 2>/dev/null || true
mkdir -p "$WORK/traces" "$WORK/heatmaps"
ln -s /dev/full "$WORK/traces/trace.rank2.json"
ln -s /dev/full "$WORK/heatmaps/routing_block1_moe.png"
expect_failure trace_write_fails \
  'rank 2: output error: --trace_dir=.*trace.rank2.json: write failed: No space left on device' 6 \
  -np 4 "$TRAIN" "${common[@]}" --override="$SMALL" --trace_dir="$WORK/traces"
expect_failure heatmap_write_fails \
  'output error: --analytics_dir=.*routing_block1_moe.png: write failed: No space left on device' 6 \
  -np 4 "$TRAIN" "${common[@]}" --override="$SMALL" --analytics_dir="$WORK/heatmaps"
# The super-class file's folder is removed while the tool trains.
superclass_out_gone() {
  mkdir -p "$WORK/superclasses"
  start_job superclass_out_gone -np 4 "$TOOL" --config="$SRC_DIR/launcher/configs/vit_tiny.pbtxt" \
    --log_dir="$WORK/logs" --override='log_every: 1' --steps=40 --train_count=4096 --heldout_count=512 \
    --out="$WORK/superclasses/E4.txt"
  if ! wait_for_text 'dense step 2/' 120; then wait_job 1; fail superclass_out_gone "never reached step 2"; return; fi
  rm -rf "$WORK/superclasses"
  local t0
  t0=$(date +%s.%N)
  wait_job 120
  ELAPSED=$(seconds_since "$t0")
  check_ended superclass_out_gone 'output error: --out=.*E4.txt: open for writing failed: No such file or directory' 6
}
if selected superclass_out_gone; then superclass_out_gone; fi

expect_failure missing_data_file '/nonexistent/train-images.gz' 3 \
  -np 4 "$TRAIN" "${common[@]}" --override="$SMALL data { train_images: '/nonexistent/train-images.gz' }"
expect_failure different_configs 'ranks hold different configs' 2 \
  -np 1 "$TRAIN" "${common[@]}" --override="$SMALL" : \
  -np 3 "$TRAIN" "${common[@]}" --override="$SMALL seed: 7"
expect_failure rank_dies 'injected failure' any \
  -np 4 "$TRAIN" "${common[@]}" --override="$SMALL" --fault_rank=2 --fault_step=1
expect_failure nan_loss 'loss is not finite at step 1' 4 \
  -np 4 "$TRAIN" "${common[@]}" --override="$SMALL" --fault_nan_step=1

# SIGTERM. To mpirun (Open MPI 4.1): it sends the ranks SIGCONT, SIGTERM a second later, SIGKILL
# a second after that, and exits 1; every rank prints where it was first. To the ranks
# themselves (a scheduler signalling every process): they exit 143, which mpirun passes on.
LONG='steps: 2000 log_every: 1 data { eval_images: 64 }'
for target in mpirun ranks; do
  name="sigterm_to_$target"
  selected "$name" || continue
  start_job "$name" -np 4 "$TRAIN" --config="$CONFIG" --log_dir="$WORK/logs_$target" --override="$LONG"
  if ! wait_for_text 'step 2/2000' 120; then wait_job 1; fail "$name" "never reached step 2"; continue; fi
  t0=$(date +%s.%N)
  if [ "$target" = mpirun ]; then kill -TERM "$JOB_PID"; else pkill -TERM -f -- "^$TRAIN .*--log_dir=$WORK/logs_ranks"; fi
  wait_job 30
  ELAPSED=$(seconds_since "$t0")
  n=$(grep -cE 'moe_train: rank [0-3]: stopped by SIGTERM during step [0-9]+ of 2000' "$OUT" || true)
  if [ "$n" -ne 4 ]; then fail "$name" "$n of 4 ranks said where they stopped"; continue; fi
  check_ended "$name" 'moe_train: rank 0: stopped by SIGTERM during step [0-9]+ of 2000' \
    "$([ "$target" = mpirun ] && echo 1 || echo 143)"
done

# device "cuda" where it cannot run: a build without the CUDA path refuses it in validation; a
# CUDA build on a machine without a usable GPU fails at device binding. Either way every rank ends.
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  expect_failure cuda_without_gpu 'device="cuda"|the NCCL path needs a GPU' any \
    -np 2 "$TRAIN" "${common[@]}" --override="$SMALL device: 'cuda' parallel { ep_size: 2 }"
fi
finish
