#!/usr/bin/env bash
# A short Sparse-MLP run on 4 ranks (sparse_mlp_tiny: experts sharded EP=4): the loss must fall,
# the metrics file must hold one object per step with the four MoE layers' (MoE_S and MoE_C of
# two sparse blocks) statistics and an evaluation, and the summary line must name the family.
set -euo pipefail
source "$(dirname "$0")/common.sh"
CONFIG="$SRC_DIR/launcher/configs/sparse_mlp_tiny.pbtxt"
STEPS=40
run_job mixer 600 -np 4 "$TRAIN" --config="$CONFIG" --log_dir="$WORK/logs" \
  --metrics_out="$WORK/metrics.jsonl" \
  --override="steps: $STEPS log_every: 10 optimizer { warmup_steps: 5 } data { eval_images: 256 }"
if [ "$RC" -ne 0 ]; then fail mixer_exit "exit $RC"; finish; exit 1; fi
pass mixer_exit
n_steps=$(grep -c '"loss"' "$WORK/metrics.jsonl" || true)
[ "$n_steps" -eq "$STEPS" ] && pass metrics_per_step || fail metrics_per_step "$n_steps step lines"
grep -q '"eval_accuracy"' "$WORK/metrics.jsonl" && pass metrics_eval || fail metrics_eval "no eval line"
num='[0-9.e-]+'
grep -qE "\"layer_dropped_fraction\": \[$num, $num, $num, $num\]" "$WORK/metrics.jsonl" \
  && pass four_moe_layers || fail four_moe_layers "no 4-element per-layer dropped list"
# Mean loss of the first 5 steps against the last 5: training must make progress.
loss() { sed -E 's/.*"loss": ([^,]*),.*/\1/' | awk '{s+=$1} END {print s/NR}'; }
first=$(grep '"loss"' "$WORK/metrics.jsonl" | awk 'NR <= 5' | loss)
last=$(grep '"loss"' "$WORK/metrics.jsonl" | tail -n 5 | loss)
awk -v a="$first" -v b="$last" 'BEGIN {exit !(b < 0.8 * a)}' && pass "loss_falls ($first -> $last)" \
  || fail loss_falls "first $first last $last"
grep -q 'final: test accuracy' "$OUT" && pass final_accuracy || fail final_accuracy "no final line"
grep -qE 'summary: family=mixer .*expert_params=[1-9]' "$OUT" && pass summary_line \
  || fail summary_line "no mixer summary with expert parameters"
finish
