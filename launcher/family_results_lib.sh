# Helpers of launcher/family_results.sh (sourced): summary-line fields, statistics over seeds,
# the CSV of every run and the table rows. They read SUMMARY ("model seed" -> summary line),
# SEEDS, STEPS, RECIPE, RUN_DIR and CONFIGS from the caller.

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

# run_done OUT_TXT: the run finished (a summary line) with the steps asked for, if any.
run_done() {
  local line
  line=$(grep -o 'summary: .*' "$1" 2>/dev/null | tail -n 1 || true)
  [ -n "$line" ] && { [ -z "$STEPS" ] || [ "$(field "$line" steps)" = "$STEPS" ]; }
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
    "best_test_accuracy,status,run_dir" | tr -d ' '
}

# csv_row FAMILY MODEL ROLE I: one run; train_flops = forward FLOPs/image x steps x global batch.
csv_row() {
  local family="$1" model="$2" role="$3" i="$4" s="${SUMMARY[$2 $4]}"
  local dir="$RUN_DIR/$RECIPE/seed$i/$model" day seed
  day=$(date -u -r "$dir/out.txt" +%Y-%m-%d 2>/dev/null || date -u +%Y-%m-%d)
  seed=$(seed_for "$CONFIGS/$model.pbtxt" "$i")
  if [[ "$s" != summary:* ]]; then
    echo "$day,$RECIPE,$family,$model,$role,$i,$seed,,,,,,,,,,,,${s// /_},$dir"
    return
  fi
  local steps batch fpi
  steps=$(field "$s" steps) batch=$(field "$s" global_batch) fpi=$(field "$s" flops_per_image)
  echo "$day,$RECIPE,$family,$model,$role,$i,$seed,$steps,$batch,$(field "$s" ranks)," \
    "$(field "$s" params),$(field "$s" expert_params),$fpi," \
    "$(awk -v f="$fpi" -v n="$steps" -v b="$batch" 'BEGIN {printf "%.0f", f * n * b}')," \
    "$(field "$s" images_per_s),$(field "$s" train_wall_s),$(field "$s" test_accuracy)," \
    "$(field "$s" best_test_accuracy),ok,$dir" | tr -d ' '
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
    days+=("$(date -u -r "$RUN_DIR/$RECIPE/seed$i/$1/out.txt" +%Y-%m-%d)")
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
