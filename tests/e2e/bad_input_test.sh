#!/usr/bin/env bash
# Bad input ends the whole job with one clear message naming the field and value, a non-zero
# exit, and no rank left running: config errors, a missing data file, ranks holding different
# configs, a rank that dies mid-training, and a NaN loss.
set -euo pipefail
source "$(dirname "$0")/common.sh"
SMALL='steps: 3 log_every: 1 data { eval_images: 64 }'

# expect_failure NAME EXPECTED_TEXT EXPECTED_RC mpirun-args...   (EXPECTED_TEXT: extended regex)
expect_failure() {
  local name="$1" text="$2" want_rc="$3"; shift 3
  run_job "$name" 180 "$@"
  if [ "$RC" -eq 0 ]; then fail "$name" "exited 0"; return; fi
  if [ "$RC" -eq 124 ] || [ "$RC" -eq 137 ]; then fail "$name" "hung (timeout)"; return; fi
  if [ "$want_rc" != "any" ] && [ "$RC" -ne "$want_rc" ]; then fail "$name" "exit $RC, want $want_rc"; return; fi
  if ! grep -qE -- "$text" "$OUT"; then fail "$name" "message lacks '$text'"; return; fi
  if ! no_rank_left; then fail "$name" "a rank is still running"; return; fi
  pass "$name (exit $RC)"
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
expect_failure missing_data_file '/nonexistent/train-images.gz' 3 \
  -np 4 "$TRAIN" "${common[@]}" --override="$SMALL data { train_images: '/nonexistent/train-images.gz' }"
expect_failure different_configs 'ranks hold different configs' 2 \
  -np 1 "$TRAIN" "${common[@]}" --override="$SMALL" : \
  -np 3 "$TRAIN" "${common[@]}" --override="$SMALL seed: 7"
expect_failure rank_dies 'injected failure' any \
  -np 4 "$TRAIN" "${common[@]}" --override="$SMALL" --fault_rank=2 --fault_step=1
expect_failure nan_loss 'loss is not finite at step 1' 4 \
  -np 4 "$TRAIN" "${common[@]}" --override="$SMALL" --fault_nan_step=1
expect_failure unwritable_analytics_dir 'analytics_dir=/proc/no_such/dir: cannot create' 2 \
  -np 4 "$TRAIN" "${common[@]}" --override="$SMALL" --analytics_dir=/proc/no_such/dir
# device "cuda" where it cannot run: a build without the CUDA path refuses it in validation; a
# CUDA build on a machine without a usable GPU fails at device binding. Either way every rank ends.
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  expect_failure cuda_without_gpu 'device="cuda"|the NCCL path needs a GPU' any \
    -np 2 "$TRAIN" "${common[@]}" --override="$SMALL device: 'cuda' parallel { ep_size: 2 }"
fi
finish
