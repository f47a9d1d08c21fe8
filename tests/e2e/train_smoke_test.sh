#!/usr/bin/env bash
# A short V-MoE run on 4 ranks (EP=4): the loss must fall, the metrics file must hold one object
# per step and an evaluation, and the communication profile must be printed.
set -euo pipefail
source "$(dirname "$0")/common.sh"
STEPS=60
run_job smoke 600 -np 4 "$TRAIN" --config="$CONFIG" --log_dir="$WORK/logs" \
  --metrics_out="$WORK/metrics.jsonl" --trace_dir="$WORK/traces" \
  --override="steps: $STEPS log_every: 20 optimizer { warmup_steps: 10 } data { eval_images: 512 }"
if [ "$RC" -ne 0 ]; then fail smoke_exit "exit $RC"; finish; exit 1; fi
pass smoke_exit
n_steps=$(grep -c '"loss"' "$WORK/metrics.jsonl" || true)
[ "$n_steps" -eq "$STEPS" ] && pass metrics_per_step || fail metrics_per_step "$n_steps step lines"
grep -q '"eval_accuracy"' "$WORK/metrics.jsonl" && pass metrics_eval || fail metrics_eval "no eval line"
# vmoe_tiny has two MoE layers: per-layer metrics come as two-element lists.
grep -qE '"layer_dropped_fraction": \[[0-9.e-]+, [0-9.e-]+\]' "$WORK/metrics.jsonl" \
  && grep -qE '"layer_capacity_use": \[[0-9.e-]+, [0-9.e-]+\]' "$WORK/metrics.jsonl" \
  && pass metrics_per_layer || fail metrics_per_layer "no per-layer dropped/capacity lists"
# Mean loss of the first 10 steps against the last 10: training must make progress.
first=$(head -n 10 "$WORK/metrics.jsonl" | sed -E 's/.*"loss": ([^,]*),.*/\1/' | awk '{s+=$1} END {print s/NR}')
last=$(grep '"loss"' "$WORK/metrics.jsonl" | tail -n 10 | sed -E 's/.*"loss": ([^,]*),.*/\1/' | awk '{s+=$1} END {print s/NR}')
awk -v a="$first" -v b="$last" 'BEGIN {exit !(b < 0.8 * a)}' && pass "loss_falls ($first -> $last)" \
  || fail loss_falls "first $first last $last"
grep -q 'a2a_dispatch' "$OUT" && grep -q 'communication profile' "$OUT" && pass profile_printed \
  || fail profile_printed "no profile table"
grep -q 'final: test accuracy' "$OUT" && pass final_accuracy || fail final_accuracy "no final line"
for r in 0 1 2 3; do
  [ -s "$WORK/traces/trace.rank$r.json" ] || { fail "trace_rank$r" "missing"; continue; }
  grep -q '"traceEvents"' "$WORK/traces/trace.rank$r.json" && pass "trace_rank$r" || fail "trace_rank$r" "not a trace"
done
# One merged trace on the common clock: valid JSON with a track and all-to-all events per rank.
python3 - "$WORK/traces/trace.merged.json" <<'PY' \
  && pass trace_merged || fail trace_merged "see above"
import json, sys
events = json.load(open(sys.argv[1]))["traceEvents"]
for r in range(4):
    a2a = [e for e in events if e.get("pid") == r and e["name"].startswith("a2a_")]
    assert a2a, f"no all-to-all events of rank {r}"
PY
grep -q 'all-to-all profile' "$OUT" && grep -qE 'straggler: rank [0-3] arrived last in' "$OUT" \
  && pass a2a_profile_printed || fail a2a_profile_printed "no all-to-all table or straggler"
grep -qE '"a2a": \{"a2a_dispatch": \{"bytes_per_rank": [0-9.e+]+, "ms"' "$WORK/metrics.jsonl" \
  && grep -q '"a2a_straggler": {"rank": ' "$WORK/metrics.jsonl" \
  && pass a2a_summary_json || fail a2a_summary_json "no a2a figures in the summary object"
for r in 0 1 2 3; do
  ls "$WORK/logs"/moe_train.rank$r.* >/dev/null 2>&1 && pass "log_rank$r" || fail "log_rank$r" "no log file"
done
# The run summary line and its JSON twin (launcher/family_results.sh parses the line).
grep -qE 'summary: family=vit model=vmoe_tiny params=[0-9]+ .*flops_per_image=[0-9]+ images_per_s=[0-9.]+ train_wall_s=[0-9.]+ steps=60 .*test_accuracy=[0-9.]+' "$OUT" \
  && pass summary_line || fail summary_line "no summary line"
grep -q '"summary": {"family": "vit"' "$WORK/metrics.jsonl" && pass summary_json || fail summary_json "no summary object"
# Routing analytics of the final evaluation: a table per MoE layer (8 experts x 10 classes).
n_tables=$(grep -c 'routing matrix block[0-9]*.moe (final evaluation' "$OUT" || true)
[ "$n_tables" -eq 2 ] && grep -qE '^ +7( +[0-9]+\.[0-9]){10}$' "$OUT" && pass routing_table \
  || fail routing_table "$n_tables tables"
n_json=$(grep -c '"routing_matrix"' "$WORK/metrics.jsonl" || true)
[ "$n_json" -eq 2 ] && pass routing_json || fail routing_json "$n_json routing_matrix lines"

# With --analytics_dir, an SVG and a PNG heatmap per MoE layer (a short run: only the picture matters).
run_job analytics 600 -np 4 "$TRAIN" --config="$CONFIG" --log_dir="$WORK/logs_analytics" \
  --analytics_dir="$WORK/routing" --override="steps: 2 data { eval_images: 256 }"
[ "$RC" -eq 0 ] && pass analytics_exit || fail analytics_exit "exit $RC"
n_png=$(ls "$WORK/routing"/routing_*.png 2>/dev/null | wc -l)
png=$(ls "$WORK/routing"/routing_*.png 2>/dev/null | head -n 1)
if [ "$n_png" -eq 2 ] && [ "$(head -c 8 "$png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ]; then
  pass routing_png
else
  fail routing_png "$n_png PNG files; first bytes: $(head -c 8 "$png" 2>/dev/null | od -An -tx1)"
fi
# The labelled SVG beside each PNG: the layer in the title, Fashion-MNIST's class names, 8
# experts' rows of 10 values.
n_svg=$(ls "$WORK/routing"/routing_*.svg 2>/dev/null | wc -l)
svg="$WORK/routing/routing_block1_moe.svg"
if [ "$n_svg" -eq 2 ] && grep -q 'layer block1.moe' "$svg" && grep -q '>Ankle boot<' "$svg" \
   && grep -q '>expert 7<' "$svg" && [ "$(grep -cE '>[0-9]+\.[0-9]</text>' "$svg")" -ge 80 ] \
   && tail -n 1 "$svg" | grep -q '^</svg>$'; then
  pass routing_svg
else
  fail routing_svg "$n_svg SVG files; $svg: $(head -c 300 "$svg" 2>/dev/null)"
fi
finish
