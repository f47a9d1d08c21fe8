#!/usr/bin/env bash
# Mobile V-MoE on 4 ranks (EP=4, one expert per rank), 40 steps of launcher/configs/
# mobile_vmoe_tiny.pbtxt with the committed super-class file: the job must finish, the loss must
# fall, and the progress line must carry the router's super-class accuracy. The config's shared
# router (one decision for both MoE layers) is the default; a short run checks the per-layer form
# too, and the CUDA path refuses the shared router with a config error.
set -euo pipefail
source "$(dirname "$0")/common.sh"
CONFIG="$SRC_DIR/launcher/configs/mobile_vmoe_tiny.pbtxt"
SUPERCLASSES="$SRC_DIR/launcher/superclasses/fashion_mnist_E4.txt"
STEPS=40
run_job mobile 600 -np 4 "$TRAIN" --config="$CONFIG" --log_dir="$WORK/logs" \
  --metrics_out="$WORK/metrics.jsonl" \
  --override="steps: $STEPS log_every: 10 optimizer { warmup_steps: 5 } data { eval_images: 512 }
              model { moe { superclass_file: \"$SUPERCLASSES\" } }"
if [ "$RC" -ne 0 ]; then fail mobile_exit "exit $RC"; finish; exit 1; fi
pass mobile_exit
n_steps=$(grep -c '"loss"' "$WORK/metrics.jsonl" || true)
[ "$n_steps" -eq "$STEPS" ] && pass metrics_per_step || fail metrics_per_step "$n_steps step lines"
grep -q 'MoE layers' "$OUT" && grep -q ' 2 MoE layers' "$OUT" && pass two_moe_layers \
  || fail two_moe_layers "expected 2 MoE layers"
# Mean loss of the first 10 steps against the last 10.
first=$(head -n 10 "$WORK/metrics.jsonl" | sed -E 's/.*"loss": ([^,]*),.*/\1/' | awk '{s+=$1} END {print s/NR}')
last=$(grep '"loss"' "$WORK/metrics.jsonl" | tail -n 10 | sed -E 's/.*"loss": ([^,]*),.*/\1/' | awk '{s+=$1} END {print s/NR}')
awk -v a="$first" -v b="$last" 'BEGIN {exit !(b < 0.85 * a)}' && pass "loss_falls ($first -> $last)" \
  || fail loss_falls "first $first last $last"
grep -qE 'step 40/40 .* sc-acc [0-9.]+' "$OUT" && pass superclass_accuracy_logged \
  || fail superclass_accuracy_logged "no sc-acc in the progress line"
grep -q 'final: test accuracy' "$OUT" && pass final_accuracy || fail final_accuracy "no final line"
# The shared router is one dense parameter: the checkpoint-free way to see it is the summary's
# parameter count, 64 x 4 = 256 fewer than the per-layer form's (two routers).
params_of() { sed -nE 's/.*summary: .* params=([0-9]+) .*/\1/p' "$1" | tail -n 1; }
shared_params=$(params_of "$OUT")
run_job per_layer 600 -np 4 "$TRAIN" --config="$CONFIG" --log_dir="$WORK/logs_per_layer" \
  --override="steps: 10 log_every: 5 optimizer { warmup_steps: 2 } data { eval_images: 256 }
              model { moe { superclass_file: \"$SUPERCLASSES\" shared_router: false } }"
per_layer_params=$(params_of "$OUT")
[ "$RC" -eq 0 ] && grep -qE 'step 10/10 .* sc-acc [0-9.]+' "$OUT" && pass per_layer_routers_run \
  || fail per_layer_routers_run "exit $RC"
[ -n "$shared_params" ] && [ -n "$per_layer_params" ] \
  && [ $((per_layer_params - shared_params)) -eq 256 ] \
  && pass "one_shared_router ($shared_params vs $per_layer_params params)" \
  || fail one_shared_router "params shared '$shared_params' per-layer '$per_layer_params'"
run_job cuda 120 -np 1 "$TRAIN" --config="$CONFIG" --log_dir="$WORK/logs_cuda" \
  --override="device: \"cuda\" parallel { ep_size: 1 } model { moe { superclass_file: \"$SUPERCLASSES\" } }"
[ "$RC" -eq 2 ] && grep -q 'config error: model.moe.shared_router=true: not supported on the CUDA path yet' "$OUT" \
  && pass cuda_refuses_shared_router || fail cuda_refuses_shared_router "exit $RC"
# A missing super-class file fails validation on every rank with one message naming it.
run_job missing 120 -np 4 "$TRAIN" --config="$CONFIG" --log_dir="$WORK/logs_missing" \
  --override="model { moe { superclass_file: \"$WORK/none.txt\" } }"
[ "$RC" -eq 2 ] && grep -q "superclass_file=\"$WORK/none.txt\": $WORK/none.txt: cannot open file" "$OUT" \
  && pass missing_file_config_error || fail missing_file_config_error "exit $RC"
finish
