#!/usr/bin/env bash
# The result plots on small made-up inputs: launcher/plot_routing.py (one PNG per MoE layer from a
# metrics file's routing_matrix objects) and launcher/plot_family_results.py (accuracy vs
# training FLOPs from family_results.sh's CSV), plus the mean +- sd that family_results.sh
# prints. The plots need python3-matplotlib: without it the test is skipped (exit 77).
set -euo pipefail
source "$(dirname "$0")/common.sh"
OUT="$WORK/log.txt"
: >"$OUT"

# family_results.sh's statistics: sample sd (n - 1), the mean alone for one seed.
RECIPE=tiny RUN_DIR="$WORK" CONFIGS="$SRC_DIR/launcher/configs" STEPS="" SEEDS=1
source "$SRC_DIR/launcher/family_results_lib.sh"
got=$(mean_sd 100 2 0.5 0.7)
[ "$got" = "60.00 ± 14.14" ] && pass "mean_sd two seeds ($got)" || fail mean_sd "got '$got'"
got=$(mean_sd 1 1 812.34)
[ "$got" = "812.3" ] && pass "mean_sd one seed ($got)" || fail mean_sd_one "got '$got'"
[ "$(seed_for "$SRC_DIR/launcher/configs/vmoe_tiny.pbtxt" 3)" = 1236 ] && pass seed_for \
  || fail seed_for "seed 3 of vmoe_tiny is not 1234 + 2"

PY=""
for p in /usr/bin/python3 python3; do
  if "$p" -c 'import matplotlib' 2>/dev/null; then PY="$p"; break; fi
done
if [ -z "$PY" ]; then
  echo "SKIP: python3-matplotlib is not installed; the plots were not checked"
  finish
  exit 77
fi

# A PNG that is more than an empty canvas: the signature, and some kilobytes of drawing.
png_ok() { [ -f "$1" ] && [ "$(head -c 8 "$1" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] \
  && [ "$(stat -c %s "$1")" -gt 15000 ]; }

M="$WORK/metrics.jsonl"
cat >"$M" <<'EOF'
{"step": 0, "loss": 2.3}
{"routing_matrix": {"layer": "block1.moe", "rows_per_image": 16, "counts": [[160, 0, 32, 5, 6, 7, 8, 9, 10, 11], [0, 160, 128, 5, 6, 7, 8, 9, 10, 11], [160, 160, 160, 150, 154, 153, 152, 151, 150, 149], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]], "image_counts": [[10, 0, 2, 1, 1, 1, 1, 1, 1, 1], [0, 10, 8, 1, 1, 1, 1, 1, 1, 1], [10, 10, 10, 10, 10, 10, 10, 10, 10, 10], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]], "class_images": [10, 10, 10, 10, 10, 10, 10, 10, 10, 10]}}
{"routing_matrix": {"layer": "block3.moe", "rows_per_image": 4, "counts": [[4, 8, 0], [4, 0, 8]], "image_counts": [[1, 2, 0], [1, 0, 2]], "class_images": [2, 2, 2]}}
{"summary": {"family": "vit", "model": "made_up_vmoe", "params": 1}}
EOF
"$PY" "$SRC_DIR/launcher/plot_routing.py" "$M" --out_dir "$WORK/routing" >>"$OUT" 2>&1 \
  && pass plot_routing_exit || fail plot_routing_exit "non-zero exit"
for layer in block1_moe block3_moe; do
  png_ok "$WORK/routing/routing_${layer}_rows.png" && pass "routing PNG $layer" \
    || fail "routing PNG $layer" "missing, not a PNG or nearly empty"
done
grep -q 'block3.moe -> ' "$OUT" && pass plot_routing_names_layers || fail plot_routing_names_layers "-"
echo '{"step": 0, "loss": 2.3}' >"$WORK/dense.jsonl"
if "$PY" "$SRC_DIR/launcher/plot_routing.py" "$WORK/dense.jsonl" >>"$OUT" 2>&1; then
  fail plot_routing_no_matrix "exit 0 for a file without routing matrices"
else
  grep -q 'has no routing_matrix object' "$OUT" && pass plot_routing_no_matrix \
    || fail plot_routing_no_matrix "no message"
fi

C="$WORK/runs.csv"
{
  echo "date,recipe,family,model,role,seed_index,seed,steps,global_batch,ranks,params,expert_params,flops_per_image,train_flops,images_per_s,train_wall_s,test_accuracy,best_test_accuracy,status,run_dir"
  for s in 1 2; do
    echo "2026-11-30,tiny,V-MoE,vit_tiny,dense,$s,$((1233 + s)),300,128,4,138890,0,4558080,175030272000,900,40,0.8$s,,ok,d"
    echo "2026-11-30,tiny,V-MoE,vmoe_tiny,moe,$s,$((1233 + s)),300,128,4,371978,265216,5639424,216553881600,700,55,0.8$((s + 2)),,ok,d"
    echo "2026-11-30,tiny,pMoE,cnn_tiny,dense,$s,$((1233 + s)),600,128,4,1000,0,100000,7680000000,900,40,0.7$s,,ok,d"
    echo "2026-11-30,tiny,pMoE,pmoe_tiny,moe,$s,$((1233 + s)),600,128,4,2000,1000,150000,11520000000,900,40,0.7$((s + 4)),,ok,d"
  done
  echo "2026-11-30,tiny,pMoE,pmoe_tiny,moe,3,1236,,,,,,,,,,,,failed_(exit_1),d"
} >"$C"
"$PY" "$SRC_DIR/launcher/plot_family_results.py" "$C" --out "$WORK/acc.png" >>"$OUT" 2>&1 \
  && pass plot_family_results_exit || fail plot_family_results_exit "non-zero exit"
png_ok "$WORK/acc.png" && pass accuracy_vs_flops_png || fail accuracy_vs_flops_png "missing or empty"
grep -q '8 runs, 2 families' "$OUT" && pass failed_run_left_out || fail failed_run_left_out "-"
# --curves: per-epoch accuracies from each run's metrics file (run_dir column); two seeds of
# vit_tiny share run dir d1, vmoe_tiny has none (no curve, still a point).
mkdir -p "$WORK/d1"
printf '%s\n' '{"step": 10, "loss": 2.0}' '{"step": 469, "epoch": 1, "eval_accuracy": 0.80}' \
  '{"step": 938, "epoch": 2, "eval_accuracy": 0.84}' >"$WORK/d1/metrics.jsonl"
sed -e "s|,vit_tiny,\(.*\),d\$|,vit_tiny,\1,$WORK/d1|" "$C" >"$WORK/curves.csv"
"$PY" "$SRC_DIR/launcher/plot_family_results.py" "$WORK/curves.csv" --curves \
  --out "$WORK/curves.png" >>"$OUT" 2>&1 && pass plot_curves_exit || fail plot_curves_exit "non-zero"
png_ok "$WORK/curves.png" && pass curves_png || fail curves_png "missing or empty"
grep -q '8 runs, 2 families, 1 per-epoch curves' "$OUT" && pass curves_counted \
  || fail curves_counted "expected exactly vit_tiny's curve"
cut -d, -f1-13 "$C" >"$WORK/short.csv"
if "$PY" "$SRC_DIR/launcher/plot_family_results.py" "$WORK/short.csv" >>"$OUT" 2>&1; then
  fail csv_without_flops "exit 0 for a CSV without train_flops"
else
  grep -q 'lacks the column(s) status, test_accuracy, train_flops' "$OUT" \
    && pass csv_without_flops || fail csv_without_flops "no message naming the columns"
fi
finish
