#!/usr/bin/env bash
# pMoE end to end on 4 ranks (EP=4): 40 steps of pmoe_tiny must lower the loss and report
# FLOPs and a final accuracy; the two-phase recipe must train its routers alone, switch to frozen
# routers and hard gates at its router_phase_steps and train fresh experts; the dense CNN
# baseline must train too.
set -euo pipefail
source "$(dirname "$0")/common.sh"
STEPS=40
COMMON_OVERRIDE="steps: $STEPS log_every: 10 optimizer { warmup_steps: 5 } data { eval_images: 512 }"

# mean_loss FILE FIRST|LAST: the mean loss of the first or last 10 step lines. (awk reads all of
# its input: `grep | head` would die of SIGPIPE under pipefail whenever head exits first.)
mean_loss() {
  grep '"loss"' "$1" | sed -E 's/.*"loss": ([^,]*),.*/\1/' |
    awk -v pick="$2" '{ v[NR] = $1 } END { lo = pick == "LAST" ? NR - 9 : 1
                                          for (i = lo; i < lo + 10; i++) s += v[i]; print s / 10 }'
}

for job in pmoe_tiny pmoe_two_phase cnn_tiny; do
  override="$COMMON_OVERRIDE"
  # Two-phase: 10 router-only steps, then 30 for the fresh experts and head, which start from
  # scratch at the switch, so the loss must fall within those 30 steps of a decaying lr.
  [ "$job" = pmoe_two_phase ] && override="$override model { pmoe { router_phase_steps: 10 } }"
  run_job "$job" 600 -np 4 "$TRAIN" --config="$SRC_DIR/launcher/configs/$job.pbtxt" \
    --log_dir="$WORK/logs_$job" --metrics_out="$WORK/$job.jsonl" --override="$override"
  if [ "$RC" -ne 0 ]; then fail "${job}_exit" "exit $RC"; continue; fi
  pass "${job}_exit"
  n_steps=$(grep -c '"loss"' "$WORK/$job.jsonl" || true)
  [ "$n_steps" -eq "$STEPS" ] && pass "${job}_metrics_per_step" || fail "${job}_metrics_per_step" "$n_steps step lines"
  first=$(mean_loss "$WORK/$job.jsonl" FIRST)
  last=$(mean_loss "$WORK/$job.jsonl" LAST)
  awk -v a="$first" -v b="$last" 'BEGIN {exit !(b < 0.8 * a)}' && pass "${job}_loss_falls ($first -> $last)" \
    || fail "${job}_loss_falls" "first $first last $last"
  grep -q 'final: test accuracy' "$OUT" && pass "${job}_final_accuracy" || fail "${job}_final_accuracy" "no final line"
  if [ "$job" = pmoe_two_phase ]; then
    grep -q 'experts-only phase: routers frozen, hard gates' "$WORK"/logs_$job/moe_train.rank0.* \
      && pass "${job}_switch_logged" || fail "${job}_switch_logged" "no phase switch in rank 0's log"
  fi
done
finish
