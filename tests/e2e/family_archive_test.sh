#!/usr/bin/env bash
# launcher/family_results.sh's run archive (ARCHIVE_DIR), on made-up runs: the full recipes'
# seeds are trained over several sessions on fresh machines, so the table must add up finished
# runs from RUN_DIR (this machine's logs) and from the archive kept in the repository, archive a
# new run, carry each run's date and per-pass accuracies, and refuse in the open when the archive
# cannot be written. No training (REPORT_ONLY), so no build is needed.
set -euo pipefail
source "$(dirname "$0")/common.sh"
OUT="$WORK/log.txt"
: >"$OUT"
RUNS="$WORK/runs" ARCH="$WORK/archive"
FR="$SRC_DIR/launcher/family_results.sh"

# summary MODEL ACC WALL: a moe_train summary line.
summary() {
  echo "summary: family=conditional model=$1 params=541066 dense_params=541066 expert_params=0" \
    "flops_per_image=18626560 images_per_s=2100.0 train_wall_s=$3 steps=6094 global_batch=128" \
    "ranks=4 test_accuracy=$2 best_test_accuracy=$2 best_epoch=13"
}
# The dense baseline, seed 1, finished on this machine (its out.txt and metrics.jsonl) ...
d="$RUNS/full/seed1/conditional_dense_full"
mkdir -p "$d"
{
  echo "I1130 10:00:00.000000 1 moe_train_main.cc:345] multi-task test accuracy at step 469:" \
    "fine/image 0.7000  fine/view2 0.7100  coarse/image 0.9000  coarse/view2 0.9100"
  echo "I1130 10:00:01.000000 1 moe_train_main.cc:442] eval at step 6094: test accuracy 0.9180"
  echo "I1130 10:00:02.000000 1 moe_train_main.cc:345] multi-task test accuracy at step 6094:" \
    "fine/image 0.8600  fine/view2 0.8700  coarse/image 0.9700  coarse/view2 0.9720"
  echo "I1130 10:00:03.000000 1 moe_train_main.cc:548] $(summary conditional_dense_full 0.9180 400.0)"
} >"$d/out.txt"
printf '%s\n' '{"step": 0, "loss": 2.3}' '{"step": 469, "epoch": 1, "eval_accuracy": 0.8}' \
  '{"step": 500, "loss": 0.9}' '{"step": 6094, "epoch": 13, "eval_accuracy": 0.918}' \
  >"$d/metrics.jsonl"
touch -d '2026-11-30 10:00 UTC' "$d/out.txt"
# ... and the MoE model, seed 1, only in the archive: trained in an earlier session.
a="$ARCH/full/seed1/conditional_moe_full"
mkdir -p "$a"
printf '%s\n' "date: 2026-11-29" "binary: 0123abc" "$(summary conditional_moe_full 0.9230 800.0)" \
  "passes: fine/image 0.8700  fine/view2 0.8750  coarse/image 0.9730  coarse/view2 0.9740" \
  >"$a/run.txt"
echo '{"step": 6094, "epoch": 13, "eval_accuracy": 0.923}' >"$a/metrics.jsonl"

report() {  # report NAME ENV...: family_results.sh REPORT_ONLY on the conditional pair, 2 seeds
  local name="$1"; shift
  set +e
  env SEEDS=2 RECIPE=full REPORT_ONLY=1 FAMILIES=conditional RUN_DIR="$RUNS" \
    CSV_OUT="$WORK/$name.csv" "$@" bash "$FR" >"$WORK/$name.md" 2>>"$OUT"
  RC=$?
  set -e
}
report first ARCHIVE_DIR="$ARCH"
[ "$RC" -eq 0 ] && pass "report exit 0" || fail report_exit "exit $RC"
row() { grep "| $2 |" "$WORK/$1.md" | head -n 1; }
[[ "$(row first conditional_dense_full)" == *"| 1/2 | 6094 | 400.0 |"*"| 91.80% |"*"| 2026-11-30 |" ]] \
  && pass "the run in RUN_DIR counts, dated by its out.txt" || fail run_dir_row "$(row first conditional_dense_full)"
[[ "$(row first conditional_moe_full)" == *"| 1/2 | 6094 | 800.0 |"*"| 92.30% |"*"| 2026-11-29 |" ]] \
  && pass "the archived run counts, dated by its record" || fail archive_row "$(row first conditional_moe_full)"
# the dense run was not in the archive: it is now, with its summary, passes and curve only
r="$ARCH/full/seed1/conditional_dense_full/run.txt"
grep -qx "$(summary conditional_dense_full 0.9180 400.0)" "$r" 2>/dev/null \
  && grep -qx 'date: 2026-11-30' "$r" \
  && grep -qx 'passes: fine/image 0.8600  fine/view2 0.8700  coarse/image 0.9700  coarse/view2 0.9720' "$r" \
  && pass "a finished run goes into the archive" || fail archived "$(cat "$r" 2>&1)"
[ "$(wc -l <"$ARCH/full/seed1/conditional_dense_full/metrics.jsonl")" -eq 2 ] \
  && ! grep -q loss "$ARCH/full/seed1/conditional_dense_full/metrics.jsonl" \
  && pass "the archive keeps the per-epoch evaluations only" || fail archived_curve "-"
# per pass, seed 1: MoE - dense = +1.00 +0.50 +0.30 +0.20, mean +0.50
grep -qF '| MoE - dense | 1 | +1.00 | +0.50 | +0.30 | +0.20 | +0.50 |' "$WORK/first.md" \
  && grep -qF '| conditional_dense_full | 1 | 86.00 | 87.00 | 97.00 | 97.20 | 91.80 |' "$WORK/first.md" \
  && pass "per-pass table and MoE - dense" || fail passes_table "$(grep '|' "$WORK/first.md" | tail -n 5)"
grep -q ',ok,.*,fine/image=0.8700;fine/view2=0.8750;coarse/image=0.9730;coarse/view2=0.9740$' \
  "$WORK/first.csv" && pass "CSV passes column" || fail csv_passes "$(tail -n 2 "$WORK/first.csv")"

# A fresh machine: no RUN_DIR at all; the archive alone gives the same table, written into a
# README between its markers with the per-pass table, the text around them kept.
rm -rf "$RUNS"
printf '%s\n' "intro" "<!-- family_results full begin -->" "old table" \
  "<!-- family_results full end -->" "verdicts" >"$WORK/README.md"
report fresh ARCHIVE_DIR="$ARCH" README_OUT="$WORK/README.md"
sed -n '/^<!-- family_results full begin -->$/,/^<!-- family_results full end -->$/p' \
  "$WORK/README.md" >"$WORK/block.md"
[ "$(head -n 1 "$WORK/README.md")" = intro ] && [ "$(tail -n 1 "$WORK/README.md")" = verdicts ] \
  && ! grep -q "old table" "$WORK/README.md" && grep -q '| conditional_moe_full | 1/2 |' "$WORK/block.md" \
  && grep -qF '| MoE - dense | 1 | +1.00 |' "$WORK/block.md" \
  && pass "README_OUT: table and per-pass table between the markers" \
  || fail readme_out "$(cat "$WORK/README.md")"
diff <(grep '^|' "$WORK/first.md") <(grep '^|' "$WORK/fresh.md") >>"$OUT" \
  && pass "the archive alone gives the same table" || fail fresh_table "tables differ"
# Without the archive those runs are missing.
report none
[[ "$(row none conditional_moe_full)" == *"| 0/2 | missing |"* ]] \
  && pass "without ARCHIVE_DIR the runs are missing" || fail no_archive "$(row none conditional_moe_full)"
# STEPS asked for and the archive's differ: not the same run.
report steps ARCHIVE_DIR="$ARCH" STEPS=100
[[ "$(row steps conditional_moe_full)" == *"| 0/2 |"* ]] \
  && pass "archived run with other steps not reused" || fail steps_mismatch "$(row steps conditional_moe_full)"

# An archive that cannot be written: exit 1 and the path named, never a silent loss.
mkdir -p "$RUNS/full/seed2/conditional_dense_full"
cp "$ARCH/full/seed1/conditional_dense_full/metrics.jsonl" "$RUNS/full/seed2/conditional_dense_full/"
{ echo "x] $(summary conditional_dense_full 0.9170 410.0)"; } >"$RUNS/full/seed2/conditional_dense_full/out.txt"
: >"$WORK/not_a_dir"
report unwritable ARCHIVE_DIR="$WORK/not_a_dir"
[ "$RC" -eq 1 ] && grep -q "ARCHIVE_DIR: cannot create $WORK/not_a_dir/full/seed2/conditional_dense_full" "$OUT" \
  && pass "unwritable archive: exit 1, path named" || fail unwritable "exit $RC"
finish
