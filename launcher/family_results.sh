#!/usr/bin/env bash
# Family results: for each model family, trains its dense baseline and its MoE version with
# moe_train on CPU ranks (same data, same steps), then prints one markdown table comparing them:
# family | model | steps | wall s | images/s | params | FLOPs/image | test acc.
# Every number comes from the "summary:" line moe_train prints at the end of a run.
#
#   bash launcher/family_results.sh                     # every pair whose two configs exist
#   STEPS=300 RESULTS_OUT=results.md bash launcher/family_results.sh
#   FAMILIES="V-MoE pMoE" bash launcher/family_results.sh   # only these pairs
# Environment: STEPS (overrides the configs' steps), NP (ranks, default 4), FAMILIES (family
# names from PAIRS below; default all), RESULTS_OUT (also write the table there), RUN_DIR (logs,
# metrics, routing heatmaps; default logs/family_results), BUILD_DIR. Extra arguments go to
# every moe_train run (e.g. --override='data { eval_images: 2000 }'). Exit status 1 if a run
# failed (its row says so; the other rows are still printed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
NP="${NP:-4}"
STEPS="${STEPS:-}"
FAMILIES="${FAMILIES:-}"
RUN_DIR="${RUN_DIR:-$ROOT/logs/family_results}"
CONFIGS="$ROOT/launcher/configs"

# family | dense baseline config | MoE config (names in launcher/configs, without .pbtxt; family
# names hold no spaces, so FAMILIES can list them).
# Families still being written are listed too: a pair runs as soon as both its configs exist,
# and is skipped with a note until then.
PAIRS=(
  "V-MoE|vit_tiny|vmoe_tiny"
  "Sparse-MLP|mixer_tiny|sparse_mlp_tiny"
  "Sparse-MLP-flops-matched|mixer_tiny|sparse_mlp_flops_matched_tiny"
  "pMoE|cnn_tiny|pmoe_tiny"
  "pMoE-two-phase|cnn_tiny|pmoe_two_phase"
  "Mobile-V-MoE|vit_tiny|mobile_vmoe_tiny"
  "conditional|conditional_dense_tiny|conditional_moe_tiny"
)

note() { echo "[family_results] $*" >&2; }

BUILD_DIR="$BUILD_DIR" BUILD_TARGETS=moe_train bash "$ROOT/cmake/build.sh" >&2
source "$ROOT/cmake/mpi_env.sh"
TRAIN="$BUILD_DIR/launcher/moe_train"
mkdir -p "$RUN_DIR"
cd "$ROOT"

# The value of KEY in a summary line ("... KEY=VALUE ...").
field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p" | head -n 1; }
# 5639424 -> 5.64M, 371978 -> 372.0K: short enough for a table, precise enough to compare.
human() {
  awk -v v="$1" 'BEGIN {
    if (v >= 1e9) printf "%.2fG", v / 1e9; else if (v >= 1e6) printf "%.2fM", v / 1e6;
    else if (v >= 1e3) printf "%.1fK", v / 1e3; else printf "%d", v }'
}

declare -A SUMMARY  # model -> its summary line (a baseline shared by two pairs trains once)
failed=0
train() {
  local model="$1"
  [ -n "${SUMMARY[$model]:-}" ] && return 0
  local dir="$RUN_DIR/$model"
  rm -rf "$dir" && mkdir -p "$dir"
  note "$model: training on $NP ranks${STEPS:+, $STEPS steps} (output: $dir/out.txt)"
  set +e
  mpirun -np "$NP" "${MPIRUN_FLAGS[@]}" "$TRAIN" --config="$CONFIGS/$model.pbtxt" \
    ${STEPS:+--steps="$STEPS"} --log_dir="$dir/logs" --metrics_out="$dir/metrics.jsonl" \
    --analytics_dir="$dir/routing" "$@" >"$dir/out.txt" 2>&1
  local rc=$?
  set -e
  local line
  line=$(grep -o 'summary: .*' "$dir/out.txt" | tail -n 1 || true)
  if [ "$rc" -ne 0 ] || [ -z "$line" ]; then
    note "$model: FAILED (exit $rc); last lines:"
    tail -n 15 "$dir/out.txt" >&2
    SUMMARY[$model]="failed (exit $rc)"
    failed=1
    return 0
  fi
  ls "$dir"/routing/*.png >/dev/null 2>&1 && note "$model: routing heatmaps in $dir/routing/"
  SUMMARY[$model]="$line"
}

row() {
  local family="$1" model="$2" s="${SUMMARY[$2]}"
  if [[ "$s" != summary:* ]]; then
    echo "| $family | $model | $s | | | | | |"
    return
  fi
  local dense expert params acc
  dense=$(field "$s" dense_params)
  expert=$(field "$s" expert_params)
  params=$(human "$(field "$s" params)")
  [ "${expert:-0}" -gt 0 ] && params="$params ($(human "$expert") expert)"
  acc=$(awk -v a="$(field "$s" test_accuracy)" 'BEGIN {printf "%.2f%%", 100 * a}')
  echo "| $family | $model | $(field "$s" steps) | $(field "$s" train_wall_s) |" \
    "$(field "$s" images_per_s) | $params | $(human "$(field "$s" flops_per_image)") | $acc |"
}

rows=()
for pair in "${PAIRS[@]}"; do
  IFS='|' read -r family dense moe <<<"$pair"
  if [ -n "$FAMILIES" ] && [[ " $FAMILIES " != *" $family "* ]]; then continue; fi
  if [ ! -f "$CONFIGS/$dense.pbtxt" ] || [ ! -f "$CONFIGS/$moe.pbtxt" ]; then
    note "$family: skipped ($dense.pbtxt or $moe.pbtxt not in launcher/configs yet)"
    continue
  fi
  train "$dense" "$@"
  train "$moe" "$@"
  rows+=("$(row "$family" "$dense")" "$(row "$family" "$moe")")
done

table="| family | model | steps | wall s | images/s | params | FLOPs/image | test acc |
| --- | --- | --- | --- | --- | --- | --- | --- |"
for r in "${rows[@]}"; do table+=$'\n'"$r"; done
echo "$table"
if [ -n "${RESULTS_OUT:-}" ]; then
  {
    echo "Family results: $NP CPU ranks${STEPS:+, $STEPS steps each}, $(date -u +%Y-%m-%d)."
    echo "wall s = training loop wall time; images/s = training images per second (periodic"
    echo "evaluations excluded); params = all parameters, each expert counted once; FLOPs/image ="
    echo "forward multiply-adds x 2 (Net::FlopsPerImage); test acc on the configured test images."
    echo
    echo "$table"
  } >"$RESULTS_OUT"
  note "table written to $RESULTS_OUT"
fi
exit "$failed"
