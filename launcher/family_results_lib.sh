# Helpers of launcher/family_results.sh (sourced): summary-line fields, statistics over seeds,
# the run archive, the CSV of every run and the table rows. They read SUMMARY ("model seed" ->
# summary line), DAY ("model seed" -> the UTC day it ran), PASSES ("model seed" -> its last
# per-pass accuracy line, conditional models only), SOURCE ("model seed" -> the directory its
# record came from), SEEDS, STEPS, RECIPE, RUN_DIR, ARCHIVE_DIR and CONFIGS from the caller.

# The value of KEY in a summary line ("... KEY=VALUE ...").
field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p" | head -n 1; }

# 5639424 -> 5.64M, 371978 -> 372.0K: short enough for a table, precise enough to compare.
human() {
  awk -v v="$1" 'BEGIN {
    if (v >= 1e9) printf "%.2fG", v / 1e9; else if (v >= 1e6) printf "%.2fM", v / 1e6;
    else if (v >= 1e3) printf "%.1fK", v / 1e3; else printf "%d", v }'
}

# seed_for CONFIG I: the seed of run I (1-based): the config's seed (proto default 1234) + I - 1,
# so run 1 is exactly the config's own run.
seed_for() {
  local base
  base=$(sed -n 's/^seed: *\([0-9][0-9]*\).*/\1/p' "$1" | tail -n 1)
  echo $(( ${base:-1234} + $2 - 1 ))
}

# run_done FILE: the run finished (a summary line in FILE: out.txt or an archive's run.txt)
# with the steps asked for, if any.
run_done() {
  local line
  line=$(grep -o 'summary: .*' "$1" 2>/dev/null | tail -n 1 || true)
  [ -n "$line" ] && { [ -z "$STEPS" ] || [ "$(field "$line" steps)" = "$STEPS" ]; }
}

# last_passes OUT_TXT: the last evaluation's accuracy per pass, "fine/image 0.8666  fine/view2
# 0.8626  ...", from moe_train's "multi-task test accuracy at step N: ..." line (models with
# several evaluation passes, the conditional family); nothing for the others.
last_passes() {
  { grep -o 'test accuracy at step [0-9]*: .*' "$1" || true; } | tail -n 1 | sed 's/^[^:]*: //'
}

# The archive keeps what a table, the per-pass table and the curves need from a finished run, in
# the repository, so that seeds spread over sessions on fresh machines add up:
# ARCHIVE_DIR/RECIPE/seedI/MODEL/run.txt ("date: ...", "binary: ...", the summary line, the last
# per-pass accuracy line) and metrics.jsonl (the per-epoch evaluation records only).
archive_dir_of() { echo "$ARCHIVE_DIR/$RECIPE/seed$2/$1"; }

# archive_run MODEL I RUN: writes the record read_record took from run directory RUN into the
# archive, with RUN's per-epoch evaluations; fails (with a note) when a write fails, so that a
# result is never lost in silence.
archive_run() {
  local to key="$1 $2"
  to=$(archive_dir_of "$1" "$2")
  mkdir -p "$to" || { note "ARCHIVE_DIR: cannot create $to"; return 1; }
  {
    echo "date: ${DAY[$key]}"
    echo "binary: ${TRAIN_REV:-unknown}"
    echo "${SUMMARY[$key]}"
    [ -z "${PASSES[$key]}" ] || echo "passes: ${PASSES[$key]}"
  } >"$to/run.txt" || { note "ARCHIVE_DIR: cannot write $to/run.txt"; return 1; }
  # only the per-epoch evaluations: the curves' data, a few kilobytes
  { grep '"epoch"' "$3/metrics.jsonl" || true; } >"$to/metrics.jsonl" \
    || { note "ARCHIVE_DIR: cannot write $to/metrics.jsonl"; return 1; }
  note "$1 seed $2: archived in $to"
}

# read_record MODEL I DIR FILE: fills SUMMARY, DAY, PASSES and SOURCE from a finished run
# (FILE = DIR/out.txt, its day the file's) or an archived one (FILE = DIR/run.txt).
read_record() {
  local key="$1 $2" dir="$3" file="$4"
  SUMMARY[$key]=$(grep -o 'summary: .*' "$file" | tail -n 1)
  SOURCE[$key]="$dir"
  if [[ "$file" == */run.txt ]]; then
    DAY[$key]=$(sed -n 's/^date: //p' "$file" | head -n 1)
    PASSES[$key]=$(sed -n 's/^passes: //p' "$file" | head -n 1)
  else
    DAY[$key]=$(date -u -r "$file" +%Y-%m-%d)
    PASSES[$key]=$(last_passes "$file")
  fi
}

# mean_sd SCALE DECIMALS V1 V2 ...: "mean ± sd" of the values x SCALE (sample sd, n - 1; the
# mean alone for one value).
mean_sd() {
  local scale="$1" dec="$2"
  shift 2
  awk -v s="$scale" -v d="$dec" 'BEGIN {
    n = ARGC - 1
    for (i = 1; i <= n; ++i) { v[i] = ARGV[i] * s; sum += v[i] }
    m = sum / n
    if (n < 2) { printf "%." d "f", m; exit }
    for (i = 1; i <= n; ++i) ss += (v[i] - m) ^ 2
    printf "%." d "f ± %." d "f", m, sqrt(ss / (n - 1)) }' "$@"
}

# values MODEL KEY: KEY of every successful seed of MODEL, space-separated.
values() {
  local i s out=()
  for i in $(seq 1 "$SEEDS"); do
    s="${SUMMARY[$1 $i]:-}"
    [[ "$s" == summary:* ]] && out+=("$(field "$s" "$2")")
  done
  echo "${out[@]+"${out[@]}"}"
}

csv_header() {
  echo "date,recipe,family,model,role,seed_index,seed,steps,global_batch,ranks,params," \
    "expert_params,flops_per_image,train_flops,images_per_s,train_wall_s,test_accuracy," \
    "best_test_accuracy,status,run_dir,passes" | tr -d ' '
}

# csv_row FAMILY MODEL ROLE I: one run; train_flops = forward FLOPs/image x steps x global batch.
csv_row() {
  local family="$1" model="$2" role="$3" i="$4" s="${SUMMARY[$2 $4]}"
  local dir="${SOURCE[$2 $4]:-$RUN_DIR/$RECIPE/seed$4/$2}" day="${DAY[$2 $4]:-}" seed
  [ -n "$day" ] || day=$(date -u +%Y-%m-%d)
  # inside the repository, relative to its root: the committed CSV then works in any checkout
  [ -n "${ROOT:-}" ] && dir="${dir#"$ROOT"/}"
  seed=$(seed_for "$CONFIGS/$model.pbtxt" "$i")
  if [[ "$s" != summary:* ]]; then
    echo "$day,$RECIPE,$family,$model,$role,$i,$seed,,,,,,,,,,,,${s// /_},$dir,"
    return
  fi
  local steps batch fpi
  steps=$(field "$s" steps) batch=$(field "$s" global_batch) fpi=$(field "$s" flops_per_image)
  echo "$day,$RECIPE,$family,$model,$role,$i,$seed,$steps,$batch,$(field "$s" ranks)," \
    "$(field "$s" params),$(field "$s" expert_params),$fpi," \
    "$(awk -v f="$fpi" -v n="$steps" -v b="$batch" 'BEGIN {printf "%.0f", f * n * b}')," \
    "$(field "$s" images_per_s),$(field "$s" train_wall_s),$(field "$s" test_accuracy)," \
    "$(field "$s" best_test_accuracy),ok,$dir,$(passes_csv "$model" "$i")" | tr -d ' '
}

# table_row FAMILY MODEL: one markdown row over the seeds.
table_row() {
  local family="$1" model="$2" first="" i ok=0
  for i in $(seq 1 "$SEEDS"); do
    if [[ "${SUMMARY[$model $i]}" == summary:* ]]; then
      ok=$((ok + 1))
      [ -z "$first" ] && first="${SUMMARY[$model $i]}"
    fi
  done
  if [ "$ok" -eq 0 ]; then
    echo "| $family | $model | 0/$SEEDS | ${SUMMARY[$model 1]} | | | | | | | |"
    return
  fi
  local seeds="$ok" params expert best acc
  [ "$ok" -lt "$SEEDS" ] && seeds="$ok/$SEEDS"
  params=$(human "$(field "$first" params)")
  expert=$(field "$first" expert_params)
  [ "${expert:-0}" -gt 0 ] && params="$params ($(human "$expert") expert)"
  acc="$(mean_sd 100 2 $(values "$model" test_accuracy))%"
  best=$(values "$model" best_test_accuracy)
  # only when every successful seed reports it
  if [ "$(wc -w <<<"$best")" -eq "$ok" ]; then best="$(mean_sd 100 2 $best)%"; else best="-"; fi
  echo "| $family | $model | $seeds | $(field "$first" steps) |" \
    "$(mean_sd 1 1 $(values "$model" train_wall_s)) |" \
    "$(mean_sd 1 1 $(values "$model" images_per_s)) | $params |" \
    "$(human "$(field "$first" flops_per_image)") | $acc | $best | $(run_dates "$model") |"
}

# run_dates MODEL: the days (UTC) its finished seeds ran on, e.g. "2026-11-30, 2026-12-01".
run_dates() {
  local i days=()
  for i in $(seq 1 "$SEEDS"); do
    [[ "${SUMMARY[$1 $i]}" == summary:* ]] || continue
    days+=("${DAY[$1 $i]}")
  done
  printf '%s\n' "${days[@]}" | sort -u | paste -sd, - | sed 's/,/, /g'
}

# replace_block FILE RECIPE TABLE: TABLE replaces the lines between FILE's markers
# "<!-- family_results RECIPE begin -->" and "<!-- family_results RECIPE end -->" (kept).
replace_block() {
  local file="$1" begin="<!-- family_results $2 begin -->" end="<!-- family_results $2 end -->"
  if ! grep -qxF "$begin" "$file" || ! grep -qxF "$end" "$file"; then
    note "README_OUT=$file: no lines \"$begin\" and \"$end\" to put the table between"
    return 1
  fi
  local tmp="$file.tmp.$$"
  TABLE="$3" awk -v b="$begin" -v e="$end" '
    $0 == b { print; print ENVIRON["TABLE"]; skip = 1; next }
    $0 == e { skip = 0 }
    !skip { print }' "$file" >"$tmp" && mv "$tmp" "$file" || { rm -f "$tmp"; return 1; }
  note "table written into $file between \"$begin\" and \"$end\""
}

# passes_csv MODEL I: the per-pass accuracies as one CSV field, "fine/image=0.8666;...".
passes_csv() {
  awk '{ for (i = 1; i + 1 <= NF; i += 2) printf "%s%s=%s", (i > 1 ? ";" : ""), $i, $(i + 1) }' \
    <<<"${PASSES[$1 $2]:-}"
}

# passes_table DENSE MOE: for a pair whose runs report several evaluation passes (the
# conditional family's task x view), one row per model and seed in percent, the mean of the
# passes last, then MoE - dense per seed where both ran and its mean +- sd; nothing otherwise.
passes_table() {
  local dense="$1" moe="$2" i m names="" rows="" diffs=()
  for m in "$dense" "$moe"; do
    for i in $(seq 1 "$SEEDS"); do
      [ -n "${PASSES[$m $i]:-}" ] || continue
      [ -n "$names" ] || names=$(awk '{ for (i = 1; i < NF; i += 2) printf " %s |", $i }' \
        <<<"${PASSES[$m $i]}")
      rows+="| $m | $i |$(awk '{ for (i = 2; i <= NF; i += 2) { printf " %.2f |", 100 * $i
        s += $i; n++ } printf " %.2f |", 100 * s / n }' <<<"${PASSES[$m $i]}")"$'\n'
    done
  done
  [ -n "$names" ] || return 0
  echo "| model | seed |$names mean |"
  echo "| --- | --- |$(sed 's/[^|]*|/ --- |/g' <<<"$names") --- |"
  printf '%s' "$rows"
  for i in $(seq 1 "$SEEDS"); do
    [ -n "${PASSES[$dense $i]:-}" ] && [ -n "${PASSES[$moe $i]:-}" ] || continue
    # "name value name value ...": the values' differences in points, then their mean
    diffs+=("$(awk -v a="${PASSES[$moe $i]}" -v b="${PASSES[$dense $i]}" 'BEGIN {
      n = split(a, x, " "); split(b, y, " ")
      for (j = 2; j <= n; j += 2) { d = 100 * (x[j] - y[j]); printf "%.4f ", d; s += d }
      printf "%.4f", s / (n / 2) }')")
    echo "| MoE - dense | $i |$(awk '{ for (i = 1; i <= NF; ++i) printf " %+.2f |", $i }' \
      <<<"${diffs[-1]}")"
  done
  [ "${#diffs[@]}" -gt 1 ] || return 0
  local col ncol out="| MoE - dense | mean ± sd |"
  ncol=$(wc -w <<<"${diffs[0]}")
  for col in $(seq 1 "$ncol"); do
    out+=" $(mean_sd 1 2 $(printf '%s\n' "${diffs[@]}" | awk -v c="$col" '{ print $c }')) |"
  done
  echo "$out"
}
