#!/usr/bin/env bash
# The training recipe end to end (dense ViT tiny on 2 ranks): a schedule of 3 epochs over a
# 640-image training subset (global batch 64: 30 steps) with augmentation, label smoothing and
# stochastic depth, evaluated after every epoch. The log must hold one "epoch E: test_accuracy="
# line per epoch, the metrics file one eval record per epoch with its "epoch", and the summary
# (line and JSON) the last and the best accuracy with its epoch. Setting steps and epochs
# together is a config error naming both; the --steps flag still overrides the length.
set -euo pipefail
source "$(dirname "$0")/common.sh"
CONFIG="$SRC_DIR/launcher/configs/vit_tiny.pbtxt"
RECIPE='steps: 0 log_every: 10 optimizer { warmup_steps: 0 }
  recipe { epochs: 3 warmup_epochs: 0.5 crop_padding: 2 horizontal_flip: true
           label_smoothing: 0.1 eval_every_epoch: true }
  model { drop_path_rate: 0.1 } data { train_images_limit: 640 eval_images: 400 }'
run_job recipe 300 -np 2 "$TRAIN" --config="$CONFIG" --log_dir="$WORK/logs" \
  --metrics_out="$WORK/metrics.jsonl" --override="$RECIPE"
if [ "$RC" -ne 0 ]; then fail recipe_exit "exit $RC"; finish; exit 1; fi
pass recipe_exit
grep -q 'global batch 64, steps 30' "$OUT" && pass epochs_to_steps \
  || fail epochs_to_steps "3 epochs of 640 images at global batch 64 are not 30 steps"
n_epochs=$(grep -cE 'epoch [123]: test_accuracy=[0-9.]+' "$OUT" || true)
[ "$n_epochs" -eq 3 ] && pass epoch_lines || fail epoch_lines "$n_epochs epoch lines, want 3"
for e in 1 2 3; do
  grep -qE "\"step\": $((e * 10)), \"epoch\": $e, \"eval_accuracy\"" "$WORK/metrics.jsonl" \
    && pass "metrics_epoch_$e" || fail "metrics_epoch_$e" "no eval record for epoch $e"
done
summary=$(grep -E 'summary: family=vit' "$OUT" || true)
last=$(sed -nE 's/.* test_accuracy=([0-9.]+).*/\1/p' <<<"$summary")
best=$(sed -nE 's/.*best_test_accuracy=([0-9.]+) best_epoch=([123])$/\1/p' <<<"$summary")
best_epoch=$(sed -nE 's/.*best_epoch=([123])$/\1/p' <<<"$summary")
epoch3=$(sed -nE 's/.*epoch 3: test_accuracy=([0-9.]+).*/\1/p' "$OUT")
epoch_best=$(sed -nE "s/.*epoch ${best_epoch:-0}: test_accuracy=([0-9.]+).*/\\1/p" "$OUT")
max_epoch=$(sed -nE 's/.*epoch [123]: test_accuracy=([0-9.]+).*/\1/p' "$OUT" | sort -g | tail -n 1)
[ -n "$best" ] && [ "$best" = "$max_epoch" ] && [ "$best" = "$epoch_best" ] \
  && pass "summary_best ($best at epoch $best_epoch)" \
  || fail summary_best "summary '$summary' vs epoch accuracies (max $max_epoch)"
[ -n "$last" ] && [ "$last" = "$epoch3" ] && pass "summary_last ($last)" \
  || fail summary_last "test_accuracy '$last' is not epoch 3's '$epoch3'"
grep -qE '"test_accuracy": [0-9.e-]+, "best_test_accuracy": [0-9.e-]+, "best_epoch": [123]' \
  "$WORK/metrics.jsonl" && pass summary_json || fail summary_json "no best in the summary JSON"

run_job both 120 -np 1 "$TRAIN" --config="$CONFIG" --log_dir="$WORK/logs_both" \
  --override='steps: 5 recipe { epochs: 1 }'
[ "$RC" -eq 2 ] && grep -q 'config error: steps=5 and recipe.epochs=1' "$OUT" \
  && pass steps_and_epochs_refused || fail steps_and_epochs_refused "exit $RC"

run_job flag 120 -np 1 "$TRAIN" --config="$CONFIG" --log_dir="$WORK/logs_flag" --steps=4 \
  --override='steps: 0 recipe { epochs: 2 } data { train_images_limit: 320 eval_images: 100 }'
[ "$RC" -eq 0 ] && grep -qE 'summary: .* steps=4 ' "$OUT" && pass steps_flag_overrides \
  || fail steps_flag_overrides "exit $RC"
finish
