#!/usr/bin/env bash
# Two nodes for real, on one machine: launcher/run.sh trains vmoe_tiny on 2 nodes x 2 ranks of a
# network-namespace cluster (tests/multinode/netns_cluster.sh: each node has its own host name
# and interface; Open MPI starts its daemons through an ssh-like agent with a fresh environment;
# the ranks of different nodes talk TCP over a bridge), then on 1 node x 4 ranks for comparison.
# Checks that the job spanned both nodes (each rank's log names its machine; bytes crossed the
# bridge), that the environment reached the ranks only through run.sh's -x, that it trained (loss
# printed, exit 0, the same loss as on one node), and prints the all-to-all phase times of both.
# Then checkpoints on 2 nodes x 2 ranks and resumes on 1 node x 2 ranks (another EP layout).
# Exit 77 (CTest: skipped) where network namespaces cannot be made (not root, no CAP_NET_ADMIN).
set -euo pipefail
source "$(dirname "$0")/common.sh" "$1" "$2"
# seconds_since is new in common.sh; this test also runs against a common.sh without it.
declare -F seconds_since >/dev/null ||
  seconds_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
CLUSTER_SH="$SRC_DIR/tests/multinode/netns_cluster.sh"
RUN_SH="$SRC_DIR/launcher/run.sh"
# A cluster of its own (names, subnet), so a cluster someone made by hand is left alone.
export NETNS_CLUSTER=moetest NETNS_SUBNET=10.77.9 NETNS_NODES=2 NETNS_SLOTS=2
NODE0=moetest-node0
NODE1=moetest-node1
STATE=/run/moe-netns/moetest
unset NP MPIRUN_ARGS  # the ranks' count comes from the hostfile's slots

set +e
bash "$CLUSTER_SH" check
rc=$?
set -e
if [ "$rc" -eq 77 ]; then echo "SKIP multinode: network namespaces cannot be made here"; exit 77; fi
[ "$rc" -eq 0 ] || { echo "FAIL multinode: netns_cluster.sh check exited $rc"; exit 1; }

# The cluster goes away however this script ends (a SIGKILLed run leaves a stale one, which the
# next `up` removes: its owner is gone).
trap 'bash "$CLUSTER_SH" down; rm -rf "$WORK"' EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
NETNS_OWNER=$$ bash "$CLUSTER_SH" up
read -r -a CLUSTER_MPI_ARGS <"$STATE/mpirun_args"
HOSTFILE="$STATE/hostfile"

# launch NAME LIMIT run.sh-args... : launcher/run.sh in the background with its logs in
# $WORK/NAME; sets PID, OUT, LOGS. finish_launch then sets RC and ELAPSED.
launch() {
  local name="$1" limit="$2"; shift 2
  LOGS="$WORK/$name"
  OUT="$WORK/$name.out"
  mkdir -p "$LOGS"
  T0=$(date +%s.%N)
  SKIP_BUILD=1 BUILD_DIR="$BUILD_DIR" LOG_DIR="$LOGS" METRICS_OUT="$LOGS/metrics.jsonl" \
    timeout --kill-after=10 "$limit" bash "$RUN_SH" "$@" >"$OUT" 2>&1 &
  PID=$!
}
finish_launch() {
  set +e
  wait "$PID"
  RC=$?
  set -e
  ELAPSED=$(seconds_since "$T0")
}
# The ranks (moe_train processes) of the job logging to $1.
rank_pids() {
  local p
  for p in $(pgrep -f -- "--log_dir=$1" || true); do
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = moe_train ] && echo "$p"
  done
  return 0
}
# Bytes through node i's end of the bridge (both directions).
bridge_bytes() {
  local d=/sys/class/net/moetest-v$1/statistics
  echo $(($(cat "$d/rx_bytes") + $(cat "$d/tx_bytes")))
}
# The last step's loss ("step N/N  loss X ...") of a run's output.
final_loss() { sed -n 's/.*step \([0-9]*\)\/\1  loss \([0-9.]*\) .*/\2/p' "$1" | tail -n 1; }
# The mean ms of a profile phase ("a2a_dispatch | min | mean | max | MB").
phase_ms() { awk -F'|' -v p="$2" '{ gsub(/ /, "", $1) } $1 == p { gsub(/ /, "", $3); print $3 }' "$1" | tail -n 1; }
A2A_PHASES="a2a_dispatch a2a_combine a2a_combine_bwd a2a_dispatch_bwd"
TRAIN_FLAGS=(--steps=20 "--override=data { eval_images: 256 }")

# 1. The agent reaches each node as that node, host name and network (what Open MPI will do to
# start orted there).
OUT="$WORK/agent.out"
ok=1
i=0
for n in "$NODE0" "$NODE1"; do
  want="$n $NETNS_SUBNET.$((11 + i))/24"
  got=$(bash "$SRC_DIR/tests/multinode/netns_agent.sh" "$n" \
        'echo $(hostname) $(ip -o -4 addr show dev eth0 | awk "{print \$4}")' 2>>"$OUT") || ok=0
  echo "$n -> '${got:-}' (want '$want')" >>"$OUT"
  [ "${got:-}" = "$want" ] || ok=0
  i=$((i + 1))
done
if [ "$ok" = 1 ]; then pass "agent: each node answers with its own host name and address"
else fail "agent" "the agent did not reach both nodes: $(tr '\n' ' ' <"$OUT")"; fi

# 2. 2 nodes x 2 ranks through run.sh: mpirun options before `--`, trainer flags after it.
b0=$(bridge_bytes 0)
b1=$(bridge_bytes 1)
export MOE_MULTINODE_PROBE="forwarded-$$"  # run.sh must -x every MOE_* variable
export NOT_FORWARDED_PROBE=1               # ... and nothing else reaches other nodes
launch two_nodes 180 --hostfile "$HOSTFILE" "${CLUSTER_MPI_ARGS[@]}" -- "${TRAIN_FLAGS[@]}"
# While it runs, read a rank's environment: the agent starts orted with an empty one (as ssh
# would), so what a rank has, it got from mpirun -x.
ENV_SEEN=""
while kill -0 "$PID" 2>/dev/null; do
  for p in $(rank_pids "$LOGS"); do
    ENV_SEEN=$(tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null || true)
    [ -n "$ENV_SEEN" ] && break 2
  done
  sleep 0.1
done
finish_launch
unset MOE_MULTINODE_PROBE NOT_FORWARDED_PROBE
TWO_OUT="$OUT"
TWO_LOSS=$(final_loss "$OUT")
echo "2 nodes x 2 ranks: exit $RC in ${ELAPSED}s, final loss ${TWO_LOSS:-none}"
if [ "$RC" -eq 0 ] && [ -n "$TWO_LOSS" ] && grep -q "summary: .* ranks=4 " "$OUT"; then
  pass "2 nodes x 2 ranks trained (exit 0, loss $TWO_LOSS, summary over 4 ranks)"
else
  fail "2 nodes x 2 ranks" "exit $RC, loss '${TWO_LOSS:-}' (want exit 0, a loss and 'summary: ... ranks=4')"
fi

# Where each rank ran: glog heads every log file with "Running on machine: <host name>".
placement=""
for r in 0 1 2 3; do
  f=$(compgen -G "$LOGS/moe_train.rank$r.*" | head -n 1 || true)
  h=""
  if [ -n "$f" ]; then h=$(sed -n 's/^Running on machine: //p' "$f" | awk 'NR == 1'); fi
  grep -q "rank $r of 4:" "${f:-/dev/null}" 2>/dev/null || h="${h:-?}(no 'rank $r of 4' line)"
  placement+="$r:${h:-?} "
done
echo "placement: $placement"
if [ "$placement" = "0:$NODE0 1:$NODE0 2:$NODE1 3:$NODE1 " ]; then
  pass "ranks 0,1 ran on $NODE0 and ranks 2,3 on $NODE1"
else
  fail "placement" "want '0:$NODE0 1:$NODE0 2:$NODE1 3:$NODE1', got '$placement'"
fi

# The all-to-alls really crossed the bridge (tens of MB for this job; 1 MB is a floor far above
# the daemons' own chatter).
d0=$(($(bridge_bytes 0) - b0))
d1=$(($(bridge_bytes 1) - b1))
echo "bridge traffic: $NODE0 $((d0 / 1024)) KiB, $NODE1 $((d1 / 1024)) KiB"
if [ "$d0" -gt 1048576 ] && [ "$d1" -gt 1048576 ]; then
  pass "rank traffic went between the nodes over TCP ($((d0 / 1048576)) MiB, $((d1 / 1048576)) MiB)"
else
  fail "bridge traffic" "only $d0 and $d1 bytes through the nodes' interfaces"
fi

if grep -qx "OPENBLAS_NUM_THREADS=1" <<<"$ENV_SEEN" && grep -qx "MOE_MULTINODE_PROBE=forwarded-$$" <<<"$ENV_SEEN" &&
   ! grep -q "^NOT_FORWARDED_PROBE=" <<<"$ENV_SEEN"; then
  pass "a rank on another node got OPENBLAS_NUM_THREADS and MOE_* through -x, and nothing else"
else
  fail "forwarded environment" "rank environment: $(grep -E '^(OPENBLAS_|OMP_|MOE_|NOT_FORWARDED_)' <<<"$ENV_SEEN" | tr '\n' ' ') (empty: no rank seen)"
fi

left=""
for n in "$NODE0" "$NODE1"; do left+=$(ip netns pids "$n" 2>/dev/null | tr '\n' ' '); done
if [ -z "$left" ] && no_rank_left; then pass "no orted or rank left on the nodes"
else fail "leftovers" "processes still in the nodes: $left"; fi

# 3. 1 node x 4 ranks (shared memory only) on the same cluster, for comparison: the same loss
# (the layout changes where experts live and which transport carries the bytes, not the math),
# and its all-to-all times.
launch one_node 180 --host "$NODE0:4" "${CLUSTER_MPI_ARGS[@]}" -- "${TRAIN_FLAGS[@]}"
finish_launch
ONE_LOSS=$(final_loss "$OUT")
echo "1 node x 4 ranks: exit $RC in ${ELAPSED}s, final loss ${ONE_LOSS:-none}"
if [ "$RC" -eq 0 ] && [ -n "$ONE_LOSS" ] && [ -n "$TWO_LOSS" ] &&
   awk -v a="$ONE_LOSS" -v b="$TWO_LOSS" 'BEGIN { d = a - b; exit !(d < 1e-3 && d > -1e-3) }'; then
  pass "1 node x 4 ranks trained to the same loss ($ONE_LOSS vs $TWO_LOSS on 2 nodes)"
else
  fail "1 node x 4 ranks" "exit $RC, loss '${ONE_LOSS:-}' vs '${TWO_LOSS:-}' on 2 nodes"
fi

# The all-to-all phases, mean ms per step over the ranks (the communication profile table).
printf '%-18s %14s %14s\n' "phase (mean ms)" "2 nodes x 2" "1 node x 4"
for p in $A2A_PHASES; do
  printf '%-18s %14s %14s\n' "$p" "$(phase_ms "$TWO_OUT" "$p")" "$(phase_ms "$OUT" "$p")"
done

# 4. Checkpoint on 2 nodes, resume on 1 node x 2 ranks.
# The checkpoint directory is one path every node sees (the nodes share this machine's file
# system, as a cluster shares /shared). 2 nodes x 2 ranks (EP 4) save every 10 steps; 1 node x 2
# ranks (EP 2, batch 64 per rank: the same global batch of 128) resume from step 10, and steps
# 10-19 must follow the 2-node run within the resharding tolerance of tests/e2e/checkpoint_test.sh.
checkpoint_two_nodes_resume_one_node() {
  local ck="$WORK/ckpt" two one
  launch ckpt_two 180 --hostfile "$HOSTFILE" "${CLUSTER_MPI_ARGS[@]}" -- --steps=20 \
    "--override=data { eval_images: 256 }" --checkpoint_dir="$ck" --checkpoint_every=10
  finish_launch
  two="$LOGS/metrics.jsonl"
  if [ "$RC" -ne 0 ] || [ ! -f "$ck/step-00000010/manifest.pb" ]; then
    fail "checkpoint on 2 nodes" "exit $RC, step-00000010 complete: $(ls "$ck" 2>/dev/null | tr '\n' ' ')"
    return
  fi
  launch ckpt_one 180 --host "$NODE0:2" "${CLUSTER_MPI_ARGS[@]}" -- --steps=20 \
    "--override=data { eval_images: 256 batch_per_rank: 64 } parallel { ep_size: 2 }" \
    --resume_from="$ck/step-00000010"
  finish_launch
  one="$LOGS/metrics.jsonl"
  local worst
  worst=$(awk 'NR == FNR { if (match($0, /^{"step": [0-9]+, "loss": [^,]+/)) {
                 split(substr($0, 1, RLENGTH), f, /[:,] */); want[f[2]] = f[4] } next }
               match($0, /^{"step": [0-9]+, "loss": [^,]+/) {
                 split(substr($0, 1, RLENGTH), f, /[:,] */); n++
                 d = (f[4] - want[f[2]]) / want[f[2]]; if (d < 0) d = -d; if (d > w) w = d }
               END { if (n != 10) print "missing"; else printf "%.3g", w }' "$two" "$one")
  if [ "$RC" -eq 0 ] && grep -q "resuming from $ck/step-00000010 at step 10 (written on EP 4 x DP 1, now EP 2 x DP 1)" "$OUT" &&
     [ "$worst" != missing ] && awk -v w="$worst" 'BEGIN { exit !(w <= 1e-4) }'; then
    pass "checkpoint on 2 nodes x 2 ranks, resumed on 1 node x 2 ranks (steps 10-19 within $worst of the 2-node run)"
  else
    fail "resume on 1 node" "exit $RC, worst relative loss difference '$worst'"
  fi
}
checkpoint_two_nodes_resume_one_node

finish
