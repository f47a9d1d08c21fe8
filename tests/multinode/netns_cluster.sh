#!/usr/bin/env bash
# A multi-node cluster on one machine, for testing multi-node launches for real: every "node" is
# a Linux network namespace with its own host name (a persistent UTS namespace) and its own
# interface, and a bridge in the root namespace joins them on a private /24. Open MPI starts its
# daemon (orted) on a node through `agent` below, given as its rsh agent instead of ssh, so the
# ranks of different nodes really talk over TCP through the bridge (and only ranks of one node
# share memory: Open MPI's vader BTL is used between ranks it placed on the same node).
#
#   netns_cluster.sh check        exit 0 if namespaces can be made here, else 77 with the reason
#   netns_cluster.sh up           make the cluster (NETNS_NODES nodes); prints the hostfile and
#                                 the mpirun options to use with it
#   netns_cluster.sh down         remove it (idempotent; ends the processes left inside it)
#   netns_cluster.sh agent HOST CMD...   Open MPI's rsh agent (via netns_agent.sh): runs CMD
#                                 (one shell command line, as ssh would) on HOST, from its home
#                                 directory, in a fresh environment, as an ssh login would
#   netns_cluster.sh exec HOST CMD...    runs CMD (argv, caller's environment) on HOST
#   netns_cluster.sh run CMD...   up, run CMD with NETNS_HOSTFILE and NETNS_MPIRUN_ARGS set, down
#
# With the cluster up, a 2 x 2 job through the launcher (paths from `up`'s output):
#   bash launcher/run.sh --hostfile /run/moe-netns/moe/hostfile \
#       $(cat /run/moe-netns/moe/mpirun_args) -- --steps=20
#
# Environment: NETNS_CLUSTER (name prefix of namespaces and interfaces, at most 8 characters;
# default moe), NETNS_SUBNET (first three octets of the /24; default 10.77.0), NETNS_NODES
# (default 2), NETNS_SLOTS (slots per node in the hostfile; default 2). Needs root (or
# CAP_NET_ADMIN and CAP_SYS_ADMIN), iproute2 (ip) and util-linux (unshare, nsenter).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CLUSTER="${NETNS_CLUSTER:-moe}"
SUBNET="${NETNS_SUBNET:-10.77.0}"
NODES="${NETNS_NODES:-2}"
SLOTS="${NETNS_SLOTS:-2}"
STATE="/run/moe-netns/$CLUSTER"
BRIDGE="$CLUSTER-br"          # in the root namespace, address $SUBNET.1 (mpirun's side)
SKIP=77                       # CTest's SKIP_RETURN_CODE for "cannot run here"

say() { echo "[netns_cluster] $*" >&2; }
die() { say "error: $*"; exit 1; }
skip() { say "SKIP: $*"; exit "$SKIP"; }
node() { echo "$CLUSTER-node$1"; }        # node i's namespace name = its host name
node_ip() { echo "$SUBNET.$(($1 + 11))"; }  # node i's address: .11, .12, ...

# Interface names are at most 15 characters: "<cluster>-br", "<cluster>-v<i>".
[[ "$CLUSTER" =~ ^[a-z][a-z0-9]{0,7}$ ]] || die "NETNS_CLUSTER=$CLUSTER: 1-8 lower-case letters/digits"
[[ "$SUBNET" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "NETNS_SUBNET=$SUBNET: three octets, e.g. 10.77.0"
[[ "$NODES" =~ ^[1-9][0-9]?$ ]] || die "NETNS_NODES=$NODES: 1..99"

cmd_check() {
  [ "$(id -u)" -eq 0 ] || skip "not root: making network namespaces needs CAP_NET_ADMIN and CAP_SYS_ADMIN"
  local t
  for t in ip unshare nsenter; do
    command -v "$t" >/dev/null || skip "'$t' not found (Debian: apt-get install iproute2 util-linux)"
  done
  # Capabilities can be missing even as root (containers): try every kind of object `up` makes.
  local ns="$CLUSTER-probe" br="$CLUSTER-pb" err
  ip netns del "$ns" 2>/dev/null || true
  ip link del "$br" 2>/dev/null || true
  if ! err=$(ip netns add "$ns" 2>&1); then skip "cannot make a network namespace: $err"; fi
  if ! err=$( { ip link add "$br" type bridge && ip link add "$CLUSTER-pv" type veth peer name eth0 netns "$ns"; } 2>&1); then
    ip netns del "$ns" 2>/dev/null || true; ip link del "$br" 2>/dev/null || true
    skip "cannot make a bridge or veth pair: $err"
  fi
  ip link del "$br" 2>/dev/null || true
  ip netns del "$ns"  # takes its veth pair with it
  if ! err=$(unshare --uts sh -c 'hostname moe-probe' 2>&1); then skip "cannot make a UTS namespace: $err"; fi
}

# The processes still inside a node (orted, ranks of an aborted job): TERM, then KILL.
end_processes_in() {
  local ns="$1" pids
  mapfile -t pids < <(ip netns pids "$ns" 2>/dev/null || true)
  [ ${#pids[@]} -eq 0 ] && return 0
  say "ending processes left in $ns: ${pids[*]}"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  sleep 1
  mapfile -t pids < <(ip netns pids "$ns" 2>/dev/null || true)
  if [ ${#pids[@]} -gt 0 ]; then kill -KILL "${pids[@]}" 2>/dev/null || true; fi
  return 0
}

cmd_down() {
  local i ns
  for ((i = 0; i < 99; i++)); do
    ns=$(node "$i")
    [ -e "/run/netns/$ns" ] || [ -e "$STATE/uts/$ns" ] || { [ "$i" -ge "$NODES" ] && break; continue; }
    end_processes_in "$ns"
    # Deleting our end takes the pair away now; a namespace's own teardown (and with it the
    # veth's) is asynchronous, and an `up` right after would find the name still taken.
    ip link del "$CLUSTER-v$i" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    if [ -e "$STATE/uts/$ns" ]; then umount "$STATE/uts/$ns" 2>/dev/null || true; fi
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  rm -rf "$STATE"
}

cmd_up() {
  cmd_check
  mkdir -p "$(dirname "$STATE")"
  if [ -f "$STATE/owner" ]; then
    local owner
    owner=$(cat "$STATE/owner")
    if kill -0 "$owner" 2>/dev/null; then
      die "cluster '$CLUSTER' is already up, owned by running process $owner (another test?); wait for it, or pick another NETNS_CLUSTER and NETNS_SUBNET"
    fi
    say "removing a stale cluster '$CLUSTER' (its owner $owner is gone)"
  fi
  cmd_down
  # The subnet must be ours alone, or mpirun's daemons could reach the wrong host.
  if ip -o -4 addr show | grep -q " inet $SUBNET\."; then
    die "subnet $SUBNET.0/24 is already used here: $(ip -o -4 addr show | grep " inet $SUBNET\." | awk '{print $2, $4}' | tr '\n' ' '); set NETNS_SUBNET"
  fi
  # A half-made cluster is removed again (and the error still reported).
  trap 'rc=$?; if [ $rc -ne 0 ]; then say "up failed (exit $rc), removing the partial cluster"; cmd_down; fi' EXIT
  mkdir -p "$STATE/uts"
  echo "${NETNS_OWNER:-$PPID}" >"$STATE/owner"
  ip link add "$BRIDGE" type bridge
  ip addr add "$SUBNET.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  : >"$STATE/hostfile"
  local i ns
  for ((i = 0; i < NODES; i++)); do
    ns=$(node "$i")
    ip netns add "$ns"
    ip link add "$CLUSTER-v$i" type veth peer name eth0 netns "$ns"
    ip link set "$CLUSTER-v$i" master "$BRIDGE" up
    ip -n "$ns" addr add "$(node_ip "$i")/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    # A persistent UTS namespace (bind-mounted on a file) gives the node its own host name, so
    # Open MPI, glog and `hostname` see a different machine; `agent` enters it with the netns.
    touch "$STATE/uts/$ns"
    unshare --uts="$STATE/uts/$ns" hostname "$ns"
    echo "$ns slots=$SLOTS" >>"$STATE/hostfile"
  done
  # mpirun's options for this cluster: start orted through the agent, keep Open MPI's daemon
  # (oob) and rank (btl) traffic on the bridge subnet (the root namespace has other interfaces
  # mpirun would otherwise offer), and launch every daemon from mpirun (no tree spawn).
  echo "--mca plm_rsh_agent $HERE/netns_agent.sh --mca plm_rsh_no_tree_spawn 1 --mca oob_tcp_if_include $SUBNET.0/24 --mca btl_tcp_if_include $SUBNET.0/24" >"$STATE/mpirun_args"
  trap - EXIT
  say "up: $NODES nodes on $SUBNET.0/24 (mpirun side $SUBNET.1 on $BRIDGE)"
  echo "hostfile: $STATE/hostfile"
  echo "mpirun options: $(cat "$STATE/mpirun_args")"
}

# Open MPI runs "<agent> HOST <command line...>", as it would run "ssh HOST <command line...>".
cmd_agent() {
  [ $# -ge 2 ] || die "agent: usage: agent HOST COMMAND..."
  local host="$1"; shift
  # The host name says the cluster (<cluster>-node<i>): the agent needs no NETNS_CLUSTER.
  local state="/run/moe-netns/${host%-node*}"
  if [ ! -e "/run/netns/$host" ] || [ ! -e "$state/uts/$host" ]; then
    die "agent: no node '$host' (is its cluster up? nodes up: $(compgen -G "/run/moe-netns/*/uts/*" | xargs -r -n1 basename | tr '\n' ' '))"
  fi
  local home
  home=$(getent passwd "$(id -un)" | cut -d: -f6)
  # env -i: like an ssh login, the remote side does not inherit mpirun's environment, so what
  # the ranks need must travel with mpirun's -x (launcher/run.sh does that).
  exec nsenter --net="/run/netns/$host" --uts="$state/uts/$host" -- \
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME="$home" \
    USER="$(id -un)" LOGNAME="$(id -un)" SHELL=/bin/sh \
    sh -c "cd \"\$HOME\" && $*"
}

cmd_exec() {
  [ $# -ge 2 ] || die "exec: usage: exec HOST COMMAND [ARGS...]"
  local host="$1"; shift
  local state="/run/moe-netns/${host%-node*}"
  if [ ! -e "/run/netns/$host" ] || [ ! -e "$state/uts/$host" ]; then
    die "exec: no node '$host' (is its cluster up?)"
  fi
  exec nsenter --net="/run/netns/$host" --uts="$state/uts/$host" -- "$@"
}

cmd_run() {
  [ $# -ge 1 ] || die "run: usage: run COMMAND [ARGS...]"
  NETNS_OWNER=$$ cmd_up >&2
  trap cmd_down EXIT
  local rc=0
  NETNS_HOSTFILE="$STATE/hostfile" NETNS_MPIRUN_ARGS="$(cat "$STATE/mpirun_args")" "$@" || rc=$?
  exit "$rc"
}

sub="${1:-}"
[ $# -gt 0 ] && shift
case "$sub" in
  check) cmd_check; say "namespaces can be made here" ;;
  up) cmd_up ;;
  down) cmd_down ;;
  agent) cmd_agent "$@" ;;
  exec) cmd_exec "$@" ;;
  run) cmd_run "$@" ;;
  *) die "usage: $(basename "$0") check|up|down|agent HOST CMD...|exec HOST CMD...|run CMD..." ;;
esac
