#!/usr/bin/env bash
# The main job: expert-parallel V-MoE training on Fashion-MNIST over CPU ranks under mpirun.
# Installs missing Debian packages and builds as needed, then trains, evaluates on the 10,000
# test images and prints the communication profile.
#
#   bash launcher/run.sh                                   # vmoe_tiny, one rank per core (2-4)
#   NP=2 CONFIG=launcher/configs/vit_tiny.pbtxt bash launcher/run.sh --steps=200
#   bash launcher/run.sh --hostfile hosts -- --steps=200   # ranks on the hostfile's nodes
#   MPIRUN_ARGS="--hostfile hosts --npernode 2" bash launcher/run.sh --steps=200
#
# Arguments: with a `--` among them, those before it go to mpirun and those after it to
# moe_train; without one, all of them go to moe_train (--steps, --override, --metrics_out,
# --trace_dir, ...). MPIRUN_ARGS (split on spaces) is put before the mpirun arguments.
# Environment: NP (ranks; default: this host's cores, at least 2 so experts are sharded and at
# most 4, or the slots of a --hostfile/--host/--npernode when NP is unset), CONFIG, BUILD_DIR, LOG_DIR, METRICS_OUT, SKIP_BUILD=1 (use BUILD_DIR's binary as it is).
#
# Multi-node: mpirun starts the ranks of other nodes through ssh, in another directory and with a
# fresh environment. So every path handed to the ranks is made absolute here (relative ones are
# taken from the directory run.sh is called from), the ranks run in the repository root (relative
# paths inside configs, e.g. super-class files, keep working) and the variables the ranks need are
# exported with -x. The build, the data set and every input file must exist at the same absolute
# paths on every node (README.md, "Multi-node runs").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CALLER_DIR="$PWD"

die() { echo "run.sh: $*" >&2; exit 2; }

# abs PATH: PATH made absolute against the caller's directory (not resolved: outputs may not
# exist yet).
abs() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$CALLER_DIR" "$1" ;; esac; }
# abs_input PATH: as abs, but a relative input found only under the repository root is taken from
# there (`CONFIG=launcher/configs/vit_tiny.pbtxt` keeps working from any directory).
abs_input() {
  case "$1" in
    /*) printf '%s' "$1" ;;
    *) if [ ! -e "$CALLER_DIR/$1" ] && [ -e "$ROOT/$1" ]; then printf '%s/%s' "$ROOT" "$1"
       else printf '%s/%s' "$CALLER_DIR" "$1"; fi ;;
  esac
}

BUILD_DIR="$(abs "${BUILD_DIR:-$ROOT/build}")"
CONFIG="$(abs_input "${CONFIG:-$ROOT/launcher/configs/vmoe_tiny.pbtxt}")"
LOG_DIR="$(abs "${LOG_DIR:-$ROOT/logs}")"
METRICS_OUT="$(abs "${METRICS_OUT:-$ROOT/logs/metrics.jsonl}")"

# 1. Split the arguments: mpirun's before a `--`, moe_train's after it (all moe_train's if none).
MPI_ARGS=()
TRAIN_ARGS=()
have_sep=0
for a in "$@"; do [ "$a" = "--" ] && have_sep=1 && break; done
if [ "$have_sep" = 1 ]; then
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do MPI_ARGS+=("$1"); shift; done
  shift  # the `--`
fi
TRAIN_ARGS=("$@")
if [ -n "${MPIRUN_ARGS:-}" ]; then
  read -r -a env_mpi_args <<<"$MPIRUN_ARGS"
  MPI_ARGS=("${env_mpi_args[@]}" "${MPI_ARGS[@]+"${MPI_ARGS[@]}"}")
fi

# 2. moe_train's path flags, absolute (--flag=V, -flag=V and --flag V forms, as gflags takes
# them). --checkpoint_dir is the checkpoint directory (on a file system every node shares).
PATH_FLAGS="config|log_dir|metrics_out|trace_dir|analytics_dir|checkpoint_dir"
fixed=()
i=0
while [ $i -lt ${#TRAIN_ARGS[@]} ]; do
  a="${TRAIN_ARGS[$i]}"
  if [[ "$a" =~ ^(--?)($PATH_FLAGS)=(.*)$ ]]; then
    name="${BASH_REMATCH[2]}"; value="${BASH_REMATCH[3]}"
    if [ -z "$value" ]; then fixed+=("$a")
    elif [ "$name" = config ]; then fixed+=("--config=$(abs_input "$value")")
    else fixed+=("--$name=$(abs "$value")"); fi
  elif [[ "$a" =~ ^(--?)($PATH_FLAGS)$ ]]; then
    name="${BASH_REMATCH[2]}"
    i=$((i + 1))
    [ $i -lt ${#TRAIN_ARGS[@]} ] || die "moe_train flag $a needs a value"
    value="${TRAIN_ARGS[$i]}"
    if [ "$name" = config ]; then fixed+=("--config=$(abs_input "$value")")
    else fixed+=("--$name=$(abs "$value")"); fi
  else
    fixed+=("$a")
  fi
  i=$((i + 1))
done
TRAIN_ARGS=("${fixed[@]+"${fixed[@]}"}")

# 3. How many ranks: NP if set; else mpirun's own count if given (-np N), or the slots of the
# hosts it was given (--hostfile, --host, --npernode, ...); else one rank per core of this host,
# 2 to 4: more ranks than cores only slow the job down (each waits for the rank sharing its core
# at every all-to-all), and 2 still shows the experts sharded.
has_mpi_arg() {  # has_mpi_arg REGEX: some mpirun argument matches REGEX (whole word)
  local a
  for a in "${MPI_ARGS[@]+"${MPI_ARGS[@]}"}"; do [[ "$a" =~ ^($1)$ ]] && return 0; done
  return 1
}
NP_ARGS=()
if [ -n "${NP:-}" ]; then
  has_mpi_arg '-n|-np|--np|-c|--n' && die "NP=$NP and a process count among the mpirun arguments: give one of them"
  NP_ARGS=(-np "$NP")
elif has_mpi_arg '-n|-np|--np|-c|--n'; then
  :
elif has_mpi_arg '-hostfile|--hostfile|-machinefile|--machinefile|-default-hostfile|--default-hostfile|-H|-host|--host|-N|-npernode|--npernode|--ppr' ||
     [ -n "${OMPI_MCA_orte_default_hostfile:-}" ]; then
  :  # mpirun starts one rank per slot (a hostfile's slots=N, --host a:2, N per node)
else
  cores=$(nproc 2>/dev/null || echo 2)
  NP_ARGS=(-np "$(( cores < 2 ? 2 : (cores > 4 ? 4 : cores) ))")
fi
# The ranks start in the repository root on every node, unless mpirun is told otherwise.
WDIR_ARGS=(--wdir "$ROOT")
has_mpi_arg '-wdir|--wdir|-wd|--wd|-set-cwd-to-session-dir|--set-cwd-to-session-dir' && WDIR_ARGS=()

# 4. Build (on this node only: other nodes must see the same BUILD_DIR) and the MPI environment.
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  BUILD_DIR="$BUILD_DIR" BUILD_TARGETS=moe_train bash "$ROOT/cmake/build.sh"
fi
TRAIN="$BUILD_DIR/launcher/moe_train"
# moe_train wants its output folders to exist; these defaults are made here (on a file system
# the node of rank 0 shares, for a multi-node run).
mkdir -p "$LOG_DIR" "$(dirname "$METRICS_OUT")"
[ -x "$TRAIN" ] || die "$TRAIN is missing (build it, or unset SKIP_BUILD)"
source "$ROOT/cmake/mpi_env.sh"

# Ranks started by ssh on other nodes get a fresh environment: export what they need by name.
# OPENBLAS/OMP threads come from mpi_env.sh; NCCL_*, MOE_* and OPENBLAS_CORETYPE (the kernels
# OpenBLAS runs: every node the same ones) only when the caller set them.
EXPORT_ARGS=()
for v in OPENBLAS_NUM_THREADS OMP_NUM_THREADS \
    $(compgen -e | grep -E '^(NCCL_|MOE_|OPENBLAS_CORETYPE$)' || true); do
  EXPORT_ARGS+=(-x "$v")
done

CMD=(mpirun "${NP_ARGS[@]+"${NP_ARGS[@]}"}" "${MPIRUN_FLAGS[@]}" "${WDIR_ARGS[@]+"${WDIR_ARGS[@]}"}"
     "${EXPORT_ARGS[@]}" "${MPI_ARGS[@]+"${MPI_ARGS[@]}"}"
     "$TRAIN" --config="$CONFIG" --log_dir="$LOG_DIR" --metrics_out="$METRICS_OUT"
     "${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}")
echo "[run.sh] $(printf '%q ' "${CMD[@]}")" >&2
# mpirun itself runs in the caller's directory, so its own relative paths (--hostfile hosts)
# mean what the caller typed.
exec "${CMD[@]}"
