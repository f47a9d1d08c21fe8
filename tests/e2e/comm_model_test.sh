#!/usr/bin/env bash
# moe_comm_model on CSVs written here by moe_comm_bench (2 ranks, a tiny sweep): the default fit
# explains the transfer time when every row has it (the exchange fit's held-out error beside
# it), the exchange time on a CSV from before the skew/transfer columns (with a note), and bad
# input is an error naming the flag, the file or the field: --fit, --holdout_every, a missing
# file, a corrupt field, --fit=transfer on an old CSV.
set -euo pipefail
source "$(dirname "$0")/common.sh" "$1" "$2"
BENCH="$BUILD_DIR/launcher/moe_comm_bench"
MODEL="$BUILD_DIR/launcher/moe_comm_model"

# model NAME ARGS... : a single-process run of moe_comm_model, like run_job (RC, OUT)
model() {
  local name="$1"; shift
  set +e
  timeout --kill-after=10 60 "$MODEL" "$@" >"$WORK/$name.out" 2>&1
  RC=$?
  set -e
  OUT="$WORK/$name.out"
}

# Four sizes (tokens 64..512 at D 16 and 64) so that every fit, and the refit without every
# 4th row, has more rows than the two unknowns.
run_job sweep 240 -np 2 "$BENCH" --tokens=64,512 --dims=16,64 --experts=4 --top_k=1 --ep=2 \
  --group_tokens=64 --warmup=1 --iters=2 --csv="$WORK/new.csv"
[ "$RC" -eq 0 ] && [ "$(wc -l <"$WORK/new.csv")" -eq 5 ] && pass sweep \
  || fail sweep "exit $RC; wanted 4 CSV rows"

model fit_new --csv="$WORK/new.csv,$WORK/new.csv"
[ "$RC" -eq 0 ] && grep -q "^# fit of the transfer time on 8 rows" "$OUT" \
  && grep -q "^held-out relative error" "$OUT" \
  && grep -q "^the same with a fit of the exchange time: median" "$OUT" \
  && pass fit_transfer_by_default \
  || fail fit_transfer_by_default "exit $RC; wanted both fits' held-out errors, transfer first"

# The same rows without the two new columns, as an older moe_comm_bench wrote them.
awk -F, -v OFS=, 'NR == 1 { for (i = 1; i <= NF; i++)
                              if ($i == "skew_us" || $i == "transfer_us") drop[i] = 1 }
  { out = ""; for (i = 1; i <= NF; i++) if (!(i in drop)) out = out (out == "" ? "" : OFS) $i
    print out }' "$WORK/new.csv" >"$WORK/old.csv"
model fit_old --csv="$WORK/old.csv,$WORK/old.csv"
[ "$RC" -eq 0 ] && grep -q "^# note: a row has no transfer_us" "$OUT" \
  && grep -q "^# fit of the exchange time on 8 rows" "$OUT" && ! grep -q "^the same with" "$OUT" \
  && pass old_csv_fits_exchange \
  || fail old_csv_fits_exchange "exit $RC; wanted the note and the exchange fit"

model old_transfer --csv="$WORK/old.csv" --fit=transfer
WANT="row 1 (tokens 64, ep 2): transfer_us=-1: must be positive (not measured in this CSV)"
[ "$RC" -eq 3 ] && grep -qF "data error: fitting all rows: $WANT" "$OUT" \
  && pass old_csv_transfer_refused || fail old_csv_transfer_refused "exit $RC, wanted 3 and the row"

model bad_fit --csv="$WORK/new.csv" --fit=skew
[ "$RC" -eq 2 ] && grep -q "config error: --fit=skew: must be auto, transfer or exchange" "$OUT" \
  && pass bad_fit || fail bad_fit "exit $RC, wanted 2 and the flag named"

model bad_holdout --csv="$WORK/new.csv" --holdout_every=1
[ "$RC" -eq 2 ] && grep -q "config error: --holdout_every=1: must be >= 2" "$OUT" \
  && pass bad_holdout || fail bad_holdout "exit $RC, wanted 2 and the flag named"

model missing --csv="$WORK/none.csv"
[ "$RC" -eq 3 ] && grep -q "data error: $WORK/none.csv: cannot open for reading" "$OUT" \
  && pass missing_csv || fail missing_csv "exit $RC, wanted 3 and the path"

sed -E '3s/^([a-z]+),[0-9]+,/\1,6x4,/' "$WORK/new.csv" >"$WORK/corrupt.csv"
model corrupt --csv="$WORK/corrupt.csv"
[ "$RC" -eq 3 ] && grep -qF "data error: $WORK/corrupt.csv:3: field 'tokens': bad value '6x4'" \
  "$OUT" && pass corrupt_csv || fail corrupt_csv "exit $RC, wanted 3 and file, line, field"
finish
