#!/usr/bin/env bash
# superclass_tool end to end: the dense ViT trains on 2 ranks through the step loop moe_train
# runs (launcher/train_loop.h), with a progress line every log_every steps; the held-out
# confusions are clustered into 4 groups and written as a super-class file that Mobile V-MoE
# then trains with. A multi-task family (one softmax per task, not over every class) is refused
# before training.
set -euo pipefail
source "$(dirname "$0")/common.sh"
TOOL="$BUILD_DIR/launcher/superclass_tool"
VIT="$SRC_DIR/launcher/configs/vit_tiny.pbtxt"

run_job make_superclasses 300 -np 2 "$TOOL" --config="$VIT" --log_dir="$WORK/logs" --steps=12 \
  --override='log_every: 4' --train_count=3000 --heldout_count=1000 --out="$WORK/E4.txt"
[ "$RC" -eq 0 ] && pass tool_exit || fail tool_exit "exit $RC"
n_lines=$(grep -c 'dense step [0-9]*/12  loss' "$OUT" || true)
[ "$n_lines" -eq 3 ] && pass "progress_lines ($n_lines)" || fail progress_lines "$n_lines lines"
n_classes=$(grep -cE '^[0-9] [0-3]$' "$WORK/E4.txt" 2>/dev/null || true)
n_groups=$(grep -E '^[0-9] [0-3]$' "$WORK/E4.txt" 2>/dev/null | awk '{print $2}' | sort -u | wc -l)
if [ "$n_classes" -eq 10 ] && [ "$n_groups" -eq 4 ]; then
  pass "superclass_file ($n_classes classes, $n_groups groups)"
else
  fail superclass_file "$n_classes classes, $n_groups groups"
fi
# The comments name every class by Fashion-MNIST's names (the routing heatmaps' own list).
n_named=$({ grep '^# super-class' "$WORK/E4.txt" 2>/dev/null || true; } \
  | { grep -oE '[0-9] (T-shirt/top|Trouser|Pullover|Dress|Coat|Sandal|Shirt|Sneaker|Bag|Ankle boot)(,|$)' || true; } | wc -l)
[ "$n_named" -eq 10 ] && pass "class names ($n_named)" || fail class_names "$n_named named"

MOBILE="$SRC_DIR/launcher/configs/mobile_vmoe_tiny.pbtxt"
run_job mobile_vmoe_on_it 300 -np 4 "$TRAIN" --config="$MOBILE" --log_dir="$WORK/logs_mobile" \
  --steps=2 \
  --override="data { eval_images: 64 } model { moe { superclass_file: \"$WORK/E4.txt\" } }"
[ "$RC" -eq 0 ] && grep -q 'final: test accuracy' "$OUT" && pass mobile_vmoe_trains_with_it \
  || fail mobile_vmoe_trains_with_it "exit $RC"

run_job multi_task_refused 120 -np 2 "$TOOL" \
  --config="$SRC_DIR/launcher/configs/conditional_dense_tiny.pbtxt" --log_dir="$WORK/logs_mt" \
  --steps=2 --out="$WORK/conditional.txt"
REFUSAL='model.family="conditional": the super-class tool trains a single-task model'
[ "$RC" -eq 2 ] && grep -q "$REFUSAL" "$OUT" && [ ! -e "$WORK/conditional.txt" ] \
  && pass multi_task_refused || fail multi_task_refused "exit $RC"
no_rank_left && pass no_rank_left || fail no_rank_left "ranks still running"
finish
