#!/usr/bin/env bash
# Family results: for each model family, trains its dense baseline and its MoE version with
# moe_train on CPU ranks (same data, same steps), over one or more seeds, then prints one
# markdown table comparing them:
# family | model | seeds | steps | wall s | images/s | params | FLOPs/image | test acc | best test acc
# with mean +- sample standard deviation (n - 1) over the seeds, and writes a CSV with one row per
# model x seed (for launcher/plot_family_results.py). Every number comes from the "summary:" line
# moe_train prints at the end of a run.
#
#   bash launcher/family_results.sh                     # every pair whose two configs exist
#   STEPS=300 RESULTS_OUT=results.md bash launcher/family_results.sh
#   FAMILIES="V-MoE pMoE" bash launcher/family_results.sh   # only these pairs
#   SEEDS=3 RECIPE=full SKIP_DONE=1 ARCHIVE_DIR=tests/bench/family_runs \
#     bash launcher/family_results.sh                  # resumable, over sessions and machines
#   SEEDS=3 RECIPE=full REPORT_ONLY=1 ARCHIVE_DIR=tests/bench/family_runs \
#     README_OUT=README.md bash launcher/family_results.sh   # no training: what exists
# Environment: STEPS (overrides the configs' steps), NP (ranks, default 4), FAMILIES (family
# names from PAIRS below; default all), SEEDS (default 1: seed i = the config's seed + i - 1, so
# seed 1 is the config's own), RECIPE (tiny: configs <name>_tiny, the default; full:
# <name>_full), RESULTS_OUT (also write the table there), RUN_DIR (default logs/family_results;
# each run keeps its logs, metrics and routing heatmaps in RUN_DIR/RECIPE/seedS/MODEL),
# SKIP_DONE=1 (a run whose out.txt already has a summary line, with the same steps when STEPS is
# set, is not trained again), REPORT_ONLY=1 (train nothing: finished runs are read back, the
# others are counted as missing, e.g. "2/3" seeds; no build either), README_OUT=FILE (replace
# the table, and the per-pass tables of pairs that have them, between FILE's lines "<!-- family_results RECIPE begin -->" and "<!-- family_results
# RECIPE end -->" with this one; the verdicts around it stay hand-written), CSV_OUT (default RUN_DIR/RECIPE/runs.csv: the runs of this
# invocation's pairs and seeds, finished ones read back under SKIP_DONE=1), BUILD_DIR, TRAIN_BIN
# (train with this moe_train binary instead of building BUILD_DIR's: one fixed binary for runs
# that spread over sessions while the code moves on; TRAIN_REV names the commit it was built
# from, for the archive), ARCHIVE_DIR (keep each finished run's summary, per-pass accuracies and
# per-epoch evaluations in ARCHIVE_DIR/RECIPE/seedI/MODEL/{run.txt,metrics.jsonl}, and under
# SKIP_DONE reuse them when RUN_DIR has no such run; a finished run in RUN_DIR that the archive
# lacks is archived then, even under REPORT_ONLY: the full recipes' seeds, trained over
# several sessions on fresh machines, are kept in tests/bench/family_runs; remove a model's
# archived runs when its config changes).
# Extra arguments go to every moe_train run (e.g. --override='data { eval_images: 2000 }'; the
# seed is merged into such an override). Exit status 1 if a run failed (its row says so; the
# other rows are still printed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
NP="${NP:-4}"
STEPS="${STEPS:-}"
FAMILIES="${FAMILIES:-}"
SEEDS="${SEEDS:-1}"
RECIPE="${RECIPE:-tiny}"
SKIP_DONE="${SKIP_DONE:-0}"
REPORT_ONLY="${REPORT_ONLY:-0}"
[ "$REPORT_ONLY" = 1 ] && SKIP_DONE=1
RUN_DIR="${RUN_DIR:-$ROOT/logs/family_results}"
CSV_OUT="${CSV_OUT:-$RUN_DIR/$RECIPE/runs.csv}"
ARCHIVE_DIR="${ARCHIVE_DIR:-}"
[ -z "$ARCHIVE_DIR" ] || ARCHIVE_DIR=$(realpath -m "$ARCHIVE_DIR")
CONFIGS="$ROOT/launcher/configs"

note() { echo "[family_results] $*" >&2; }
[[ "$SEEDS" =~ ^[1-9][0-9]*$ ]] || { note "SEEDS=$SEEDS: must be a whole number >= 1"; exit 2; }
[[ "$RECIPE" == tiny || "$RECIPE" == full ]] || { note "RECIPE=$RECIPE: tiny or full"; exit 2; }

# family | dense baseline | MoE model: config base names; the recipe's config is
# launcher/configs/<base>_<RECIPE>.pbtxt (for tiny, <base>.pbtxt also serves: pmoe_two_phase).
# Family names hold no spaces, so FAMILIES can list them. Configs still being written are listed
# too: a pair runs as soon as both its configs exist, and is skipped with a note until then.
PAIRS=(
  "V-MoE|vit|vmoe"
  "Sparse-MLP|mixer|sparse_mlp"
  "Sparse-MLP-flops-matched|mixer|sparse_mlp_flops_matched"
  "pMoE|cnn|pmoe"
  "pMoE-two-phase|cnn|pmoe_two_phase"
  "Mobile-V-MoE|vit|mobile_vmoe"
  "conditional|conditional_dense|conditional_moe"
)

# The config name (without .pbtxt) of a base for this recipe, or nothing.
config_of() {
  if [ -f "$CONFIGS/$1_$RECIPE.pbtxt" ]; then echo "$1_$RECIPE"
  elif [ "$RECIPE" = tiny ] && [ -f "$CONFIGS/$1.pbtxt" ]; then echo "$1"
  fi
}

if [ "$REPORT_ONLY" != 1 ]; then
  if [ -z "${TRAIN_BIN:-}" ]; then
    BUILD_DIR="$BUILD_DIR" BUILD_TARGETS=moe_train bash "$ROOT/cmake/build.sh" >&2
  elif [ ! -x "$TRAIN_BIN" ]; then
    note "TRAIN_BIN=$TRAIN_BIN: not an executable file"
    exit 2
  fi
  source "$ROOT/cmake/mpi_env.sh"
fi
TRAIN="${TRAIN_BIN:-$BUILD_DIR/launcher/moe_train}"
# The commit the binary was built from, for the archive (TRAIN_REV names it for a TRAIN_BIN).
TRAIN_REV="${TRAIN_REV:-$( [ -n "${TRAIN_BIN:-}" ] && echo unknown \
  || git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}"
cd "$ROOT"
source "$ROOT/launcher/family_results_lib.sh"

# The user's --override values are merged with the seed's; other arguments pass through.
USER_OVERRIDE=""
PASS_ARGS=()
for a in "$@"; do
  if [[ "$a" == --override=* ]]; then USER_OVERRIDE+=" ${a#--override=}"; else PASS_ARGS+=("$a"); fi
done

declare -A SUMMARY DAY PASSES SOURCE  # "model seed" -> see family_results_lib.sh
failed=0
# train MODEL SEED_INDEX: trains (or, with SKIP_DONE, reuses a finished or archived run) one run;
# sets SUMMARY, DAY, PASSES and SOURCE, and archives a new run when ARCHIVE_DIR is set.
train() {
  local model="$1" i="$2"
  [ -n "${SUMMARY[$model $i]:-}" ] && return 0
  local dir="$RUN_DIR/$RECIPE/seed$i/$model" seed ovr="$USER_OVERRIDE" kept="" arch=""
  seed=$(seed_for "$CONFIGS/$model.pbtxt" "$i")
  [ "$i" -gt 1 ] && ovr+=" seed: $seed"
  [ -z "$ARCHIVE_DIR" ] || arch=$(archive_dir_of "$model" "$i")
  if [ "$SKIP_DONE" = 1 ]; then
    if run_done "$dir/out.txt"; then
      kept="$dir/out.txt"
      read_record "$model" "$i" "$dir" "$kept"
      # a run trained before (or by hand) that the archive lacks goes in now
      if [ -n "$arch" ] && ! run_done "$arch/run.txt"; then
        archive_run "$model" "$i" "$dir" || failed=1
      fi
    elif [ -n "$arch" ] && run_done "$arch/run.txt"; then
      kept="$arch/run.txt"
      read_record "$model" "$i" "$arch" "$kept"
    fi
    if [ -n "$kept" ]; then
      note "$model seed $i: done before, not trained again ($kept)"
      return 0
    fi
  fi
  if [ "$REPORT_ONLY" = 1 ]; then
    SUMMARY[$model $i]="missing"
    return 0
  fi
  rm -rf "$dir" && mkdir -p "$dir"
  note "$model seed $i (seed: $seed): training on $NP ranks${STEPS:+, $STEPS steps} ($dir/out.txt)"
  local args=(--config="$CONFIGS/$model.pbtxt" ${STEPS:+--steps="$STEPS"} --log_dir="$dir/logs"
              --metrics_out="$dir/metrics.jsonl" --analytics_dir="$dir/routing")
  [ -n "${ovr// /}" ] && args+=(--override="$ovr")
  set +e
  mpirun -np "$NP" "${MPIRUN_FLAGS[@]}" "$TRAIN" "${args[@]}" ${PASS_ARGS[@]+"${PASS_ARGS[@]}"} \
    >"$dir/out.txt" 2>&1
  local rc=$?
  set -e
  if [ "$rc" -ne 0 ] || ! run_done "$dir/out.txt"; then
    note "$model seed $i: FAILED (exit $rc); last lines:"
    tail -n 15 "$dir/out.txt" >&2
    SUMMARY[$model $i]="failed (exit $rc)"
    failed=1
    return 0
  fi
  read_record "$model" "$i" "$dir" "$dir/out.txt"
  if [ -n "$arch" ]; then archive_run "$model" "$i" "$dir" || failed=1; fi
}

rows=()
passes=""  # the per-pass tables of the pairs that have them
mkdir -p "$(dirname "$CSV_OUT")"
csv_header >"$CSV_OUT"
for pair in "${PAIRS[@]}"; do
  IFS='|' read -r family dense_base moe_base <<<"$pair"
  if [ -n "$FAMILIES" ] && [[ " $FAMILIES " != *" $family "* ]]; then continue; fi
  dense=$(config_of "$dense_base")
  moe=$(config_of "$moe_base")
  if [ -z "$dense" ] || [ -z "$moe" ]; then
    note "$family: skipped (${dense_base}_$RECIPE or ${moe_base}_$RECIPE not in" \
      "launcher/configs yet)"
    continue
  fi
  for model in "$dense" "$moe"; do
    role=dense
    [ "$model" = "$moe" ] && role=moe
    for i in $(seq 1 "$SEEDS"); do
      train "$model" "$i"
      csv_row "$family" "$model" "$role" "$i" >>"$CSV_OUT"
    done
    rows+=("$(table_row "$family" "$model")")
  done
  pair_passes=$(passes_table "$dense" "$moe")
  [ -z "$pair_passes" ] || passes+="$pair_passes"$'\n'
done

table="| family | model | seeds | steps | wall s | images/s | params | FLOPs/image | test acc |\
 best test acc | run dates |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for r in ${rows[@]+"${rows[@]}"}; do table+=$'\n'"$r"; done
echo "$table"
if [ -n "$passes" ]; then
  passes=$'\nPer evaluation pass (last evaluation, %):\n\n'"$passes"
  echo "$passes"
fi
note "every run (one row per model x seed): $CSV_OUT"
if [ -n "${RESULTS_OUT:-}" ]; then
  {
    echo "Family results ($RECIPE recipe): $NP CPU ranks${STEPS:+, $STEPS steps each}, $SEEDS" \
      "seed(s), $(date -u +%Y-%m-%d)."
    echo "Values are mean +- sample standard deviation over the seeds (n - 1; none for 1 seed)."
    echo "wall s = training loop wall time; images/s = training images per second (periodic"
    echo "evaluations excluded); params = all parameters, each expert counted once; FLOPs/image ="
    echo "forward multiply-adds x 2 (Net::FlopsPerImage); test acc on the configured test images"
    echo "after the last step; best test acc = the best periodic evaluation (- where the summary"
    echo "line does not report it)."
    echo
    echo "$table"
    [ -z "$passes" ] || echo "$passes"
  } >"$RESULTS_OUT"
  note "table written to $RESULTS_OUT"
fi
if [ -n "${README_OUT:-}" ]; then
  replace_block "$README_OUT" "$RECIPE" "$table${passes:+$'\n'$passes}" || failed=1
fi
exit "$failed"
