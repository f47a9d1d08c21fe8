#!/usr/bin/env bash
# Checkpoint and resume through moe_train on real MPI ranks (launcher/checkpoint.h):
#  - 4 ranks, 20 steps, a checkpoint every 10; resuming from step 10 repeats steps 10-19 of the
#    uninterrupted run bit for bit (losses printed with 17 significant digits);
#  - the resharding chain EP=4 -> EP=2 -> EP=1 -> EP=2 x DP=2 -> EP=4, 4 steps a hop (same global
#    batch), stays within rounding of the uninterrupted run;
#  - SIGTERM to the job leaves a complete checkpoint that resumes; SIGKILL in the middle of a save
#    leaves the previous checkpoint as the newest complete one;
#  - refusals: checksum mismatch, missing shard, another model, another number of experts, --resume
#    with no checkpoint: each with its message, exit 7 and every rank gone.
set -euo pipefail
source "$(dirname "$0")/common.sh"
BASE='log_every: 1 data { eval_images: 64 }'
common=(--config="$CONFIG" --log_dir="$WORK/logs")

# losses FILE: "step loss" per training step of a metrics file.
losses() { sed -n 's/^{"step": \([0-9]*\), "loss": \([^,]*\),.*/\1 \2/p' "$1"; }

# same_losses NAME A B FIRST LAST: steps FIRST..LAST of A and B have identical loss text.
same_losses() {
  local a b
  a=$(losses "$2" | awk -v f="$4" -v l="$5" '$1 >= f && $1 <= l')
  b=$(losses "$3" | awk -v f="$4" -v l="$5" '$1 >= f && $1 <= l')
  if [ -z "$a" ] || [ "$a" != "$b" ]; then
    fail "$1" "losses of steps $4-$5 differ"; diff <(echo "$a") <(echo "$b") | head -10; return 1
  fi
}

# close_losses NAME A B FIRST LAST TOL: steps FIRST..LAST agree within relative TOL.
close_losses() {
  local worst
  worst=$(awk -v f="$4" -v l="$5" '
    NR == FNR { want[$1] = $2; next }
    $1 >= f && $1 <= l && ($1 in want) { d = ($2 - want[$1]) / want[$1]; if (d < 0) d = -d; if (d > w) w = d; n++ }
    END { if (n != l - f + 1) print "missing"; else printf "%.3g", w }' <(losses "$2") <(losses "$3"))
  if [ "$worst" = missing ] || awk -v w="$worst" -v t="$6" 'BEGIN { exit !(w > t) }'; then
    fail "$1" "steps $4-$5: worst relative loss difference $worst (tolerance $6)"; return 1
  fi
  echo "   $1: worst relative loss difference over steps $4-$5: $worst"
}

# train NAME NP OVERRIDE EXTRA...: a job of NP ranks; exit code in RC.
train() {
  local name="$1" np="$2" override="$3"; shift 3
  run_job "$name" 240 -np "$np" "$TRAIN" "${common[@]}" --override="$BASE $override" "$@"
}

# 1. Same layout, bit for bit.
train straight 4 'steps: 20' --metrics_out="$WORK/straight.jsonl"
[ "$RC" -eq 0 ] || fail straight "exit $RC"
CK="$WORK/ck"
train saving 4 'steps: 20' --checkpoint_dir="$CK" --checkpoint_every=10 --metrics_out="$WORK/saving.jsonl"
if [ "$RC" -ne 0 ]; then fail saving "exit $RC"
elif [ ! -f "$CK/step-00000010/manifest.pb" ] || [ ! -f "$CK/step-00000020/manifest.pb" ]; then
  fail saving "checkpoints step-00000010 and step-00000020 not both written"
elif same_losses saving_changes_nothing "$WORK/straight.jsonl" "$WORK/saving.jsonl" 0 19; then
  pass "checkpointing every 10 steps leaves the losses unchanged"
fi
train resumed 4 'steps: 20' --resume_from="$CK/step-00000010" --metrics_out="$WORK/resumed.jsonl"
if [ "$RC" -ne 0 ]; then fail resumed "exit $RC"
elif ! grep -q "resuming from $CK/step-00000010 at step 10" "$OUT"; then fail resumed "no resume line"
elif [ "$(losses "$WORK/resumed.jsonl" | awk 'NR == 1 { print $1 }')" != 10 ]; then
  fail resumed "first step after resume is not 10"
elif same_losses resumed_bit_for_bit "$WORK/straight.jsonl" "$WORK/resumed.jsonl" 10 19; then
  pass "resumed at step 10 on the same layout: steps 10-19 bit for bit"
fi

# 2. Resharding chain, global batch 128 throughout; each hop stops after 4 more steps.
CH="$WORK/chain"
hop() {  # hop NAME NP EP_SIZE BATCH_PER_RANK STOP_AT [--resume]
  train "$1" "$2" "steps: 20 parallel { ep_size: $3 } data { batch_per_rank: $4 }" \
    --checkpoint_dir="$CH" --stop_at_step="$5" --metrics_out="$WORK/$1.jsonl" "${@:6}"
  [ "$RC" -eq 0 ] || { fail "$1" "exit $RC"; return 1; }
}
if hop hop_ep4 4 4 32 4 && hop hop_ep2 2 2 64 8 --resume && hop hop_ep1 1 1 128 12 --resume &&
   hop hop_ep2dp2 4 2 32 16 --resume && hop hop_ep4_again 4 4 32 20 --resume; then
  cat "$WORK"/hop_*.jsonl > "$WORK/chain.jsonl"
  # EP-invariance rounding (teacher-forced gradients agree to ~1e-6) compounds through AdamW over
  # the 16 steps after the first hop: measured 5e-8. 1e-4 leaves room for other CPUs' kernels and
  # stays far below what a real fault does: resuming with the AdamW moments lost moved the loss
  # by 4.6e-2.
  if close_losses chain "$WORK/straight.jsonl" "$WORK/chain.jsonl" 0 19 1e-4; then
    pass "EP=4 -> EP=2 -> EP=1 -> EP=2xDP=2 -> EP=4 follows the uninterrupted run"
  fi
fi

# 3. Signals. SIGTERM to mpirun: the ranks finish their step, save and stop.
SIG="$WORK/sig"
timeout --kill-after=10 120 mpirun "${MPIRUN_FLAGS[@]}" -np 4 "$TRAIN" "${common[@]}" \
  --override="$BASE steps: 400" --checkpoint_dir="$SIG" >"$WORK/sigterm.out" 2>&1 &
job=$!
until grep -qE "step ([3-9]|[1-9][0-9]+)/400" "$WORK/sigterm.out" 2>/dev/null; do sleep 0.2; done
# Signal mpirun itself, once: `timeout` would pass a SIGTERM to mpirun and to its own process
# group, i.e. twice, and a second SIGTERM makes mpirun kill the ranks at once.
t0=$(date +%s.%N)
kill -TERM "$(pgrep -P "$job" -x mpirun)"
set +e; wait "$job"; sig_rc=$?; set -e
sig_s=$(seconds_since "$t0")
OUT="$WORK/sigterm.out"
if ! ls "$SIG"/step-*/manifest.pb >/dev/null 2>&1; then fail sigterm "no complete checkpoint after SIGTERM"
elif ! grep -qE "stopped by SIGTERM after step [0-9]+; checkpoint .*step-[0-9]+ written" "$OUT"; then
  fail sigterm "no stop line naming the checkpoint"
elif ! no_rank_left; then fail sigterm "a rank is still running"
else
  train sigterm_resume 4 'steps: 400' --checkpoint_dir="$SIG" --resume --stop_at_step=12
  if [ "$RC" -eq 0 ] && grep -q "resuming from $SIG/step-" "$OUT"; then
    pass "SIGTERM to mpirun (its exit $sig_rc, job over ${sig_s} s after start) left a checkpoint that resumes"
  else fail sigterm_resume "exit $RC"; fi
fi

# SIGKILL in the middle of a save: rank 0 dies after the shards, before the manifest.
KL="$WORK/kill"
train kill_first 4 'steps: 20' --checkpoint_dir="$KL" --checkpoint_every=5 --fault_kill_in_checkpoint=10
newest=$(ls -d "$KL"/step-* 2>/dev/null | tail -1)
if [ "$RC" -eq 0 ]; then fail kill_in_save "exited 0"
elif [ ! -d "$KL/.step-00000010.partial" ]; then fail kill_in_save "no partial save left to ignore"
elif [ "$newest" != "$KL/step-00000005" ]; then fail kill_in_save "newest is '$newest', want step-00000005"
else
  train kill_resume 4 'steps: 20' --checkpoint_dir="$KL" --resume --stop_at_step=7
  if [ "$RC" -eq 0 ] && grep -q "resuming from $KL/step-00000005 at step 5" "$OUT"; then
    pass "SIGKILL during a save: the previous checkpoint stays the newest and resumes"
  else fail kill_resume "exit $RC"; fi
fi

# 4. Refusals.
refuse() {  # refuse NAME REGEX NP OVERRIDE ARGS...
  local name="$1" text="$2" np="$3" override="$4"; shift 4
  train "$name" "$np" "$override" "$@"
  if [ "$RC" -ne 7 ]; then fail "$name" "exit $RC, want 7"
  elif ! grep -qE -- "$text" "$OUT"; then fail "$name" "message lacks '$text'"
  elif ! no_rank_left; then fail "$name" "a rank is still running"
  else pass "$name (exit $RC, ${ELAPSED} s)"; fi
}
BAD="$WORK/bad"
mkdir -p "$BAD" && cp -r "$CK/step-00000010" "$BAD/"
refuse other_model 'parameter embed.proj.w \[value\]: checkpoint shape \[49, 64\], model shape \[49, 32\]' \
  4 'steps: 20 model { hidden_dim: 32 }' --resume_from="$BAD/step-00000010"
refuse other_experts 'num_experts=8, this run has model.moe.num_experts=16' \
  4 'steps: 20 model { moe { num_experts: 16 } }' --resume_from="$BAD/step-00000010"
printf '\x55' | dd of="$BAD/step-00000010/shard-r00002.bin" bs=1 seek=200 conv=notrunc status=none
refuse checksum_mismatch "checksum mismatch in $BAD/step-00000010/shard-r00002.bin for tensor " \
  4 'steps: 20' --resume_from="$BAD/step-00000010"
rm "$BAD/step-00000010/shard-r00002.bin"
refuse missing_shard 'missing or short shard for tensor .*shard-r00002.bin: open failed' \
  4 'steps: 20' --resume_from="$BAD/step-00000010"
mkdir -p "$WORK/empty"
refuse resume_nothing 'no complete checkpoint .* in --checkpoint_dir=' \
  4 'steps: 20' --checkpoint_dir="$WORK/empty" --resume
finish
