#!/usr/bin/env bash
# The conditional MoE family end to end on 4 ranks (EP=4): multi-task Fashion-MNIST with
# attribute routing in the FFN (routed fc1/fc2 pair) and in the attention. The loss must fall
# over 40 steps, the per-task test accuracy (fine and coarse, on both modalities) must be printed,
# the MOE_LAYER FFN form must run and print its routing tables, and a config that sets
# model.moe.routing for this family must end every rank with the validator's message.
set -euo pipefail
source "$(dirname "$0")/common.sh"
CONFIG="$SRC_DIR/launcher/configs/conditional_moe_tiny.pbtxt"
STEPS=40
run_job conditional 600 -np 4 "$TRAIN" --config="$CONFIG" --log_dir="$WORK/logs" \
  --metrics_out="$WORK/metrics.jsonl" \
  --override="steps: $STEPS log_every: 10 optimizer { warmup_steps: 10 } data { eval_images: 512 }"
if [ "$RC" -ne 0 ]; then fail conditional_exit "exit $RC"; finish; exit 1; fi
pass conditional_exit
n_steps=$(grep -c '"loss"' "$WORK/metrics.jsonl" || true)
[ "$n_steps" -eq "$STEPS" ] && pass metrics_per_step || fail metrics_per_step "$n_steps step lines"
first=$(grep '"loss"' "$WORK/metrics.jsonl" | awk 'NR <= 8' | sed -E 's/.*"loss": ([^,]*),.*/\1/' | awk '{s+=$1} END {print s/NR}')
last=$(grep '"loss"' "$WORK/metrics.jsonl" | tail -n 8 | sed -E 's/.*"loss": ([^,]*),.*/\1/' | awk '{s+=$1} END {print s/NR}')
awk -v a="$first" -v b="$last" 'BEGIN {exit !(b < 0.85 * a)}' && pass "loss_falls ($first -> $last)" \
  || fail loss_falls "first $first last $last"
line=$(grep 'multi-task test accuracy at step 40' "$OUT" || true)
if echo "$line" | grep -qE 'fine/image [0-9.]+ +fine/view2 [0-9.]+ +coarse/image [0-9.]+ +coarse/view2 [0-9.]+'; then
  pass "per_task_accuracy (${line##*: })"
else
  fail per_task_accuracy "no per-task accuracy line"
fi
# Coarse (4 super-classes) is the easier task: after 40 steps it must beat chance clearly.
coarse=$(echo "$line" | sed -E 's/.*coarse\/image ([0-9.]+).*/\1/')
awk -v c="${coarse:-0}" 'BEGIN {exit !(c > 0.4)}' && pass "coarse_above_chance ($coarse)" \
  || fail coarse_above_chance "coarse/image $coarse"
grep -q 'final: test accuracy' "$OUT" && pass final_accuracy || fail final_accuracy "no final line"
# The MOE_LAYER FFN form (the default is the routed pair, which the routing analytics do not
# read): a short run must train and print one expert x fine-class table per FFN MoE layer
# (blocks 0 and 2).
run_job conditional_moe_layer 600 -np 4 "$TRAIN" --config="$CONFIG" --log_dir="$WORK/logs_ml" \
  --override="steps: 10 log_every: 10 data { eval_images: 256 } model { conditional { ffn_form: MOE_LAYER } }"
[ "$RC" -eq 0 ] && pass moe_layer_form_exit || fail moe_layer_form_exit "exit $RC"
n_tables=$(grep -c 'routing matrix block[0-9]*.moe (final evaluation' "$OUT" || true)
[ "$n_tables" -ge 2 ] && pass "routing_tables ($n_tables)" || fail routing_tables "$n_tables tables"

run_job bad_routing 120 -np 4 "$TRAIN" --config="$CONFIG" --log_dir="$WORK/logs_bad" \
  --override="model { moe { routing: TOKEN_TOP_K } }"
[ "$RC" -eq 2 ] && grep -q 'model.moe.routing=TOKEN_TOP_K: family "conditional" takes its rule' "$OUT" \
  && pass bad_routing_rejected || fail bad_routing_rejected "exit $RC"
finish
