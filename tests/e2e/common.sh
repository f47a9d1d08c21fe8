# Shared by the end-to-end tests: paths, the MPI environment, and a runner with a hard time
# limit, so a hang fails the test instead of stalling CI.
BUILD_DIR="$1"
SRC_DIR="$2"
source "$SRC_DIR/cmake/mpi_env.sh"
TRAIN="$BUILD_DIR/launcher/moe_train"
CONFIG="$SRC_DIR/launcher/configs/vmoe_tiny.pbtxt"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
FAILS=0
PASSES=0

# run_job NAME TIMEOUT mpirun-args... : runs, keeps exit code in $RC, output in $WORK/NAME.out
# and the seconds it took in $ELAPSED
run_job() {
  local name="$1" limit="$2"; shift 2
  local t0
  t0=$(date +%s.%N)
  set +e
  timeout --kill-after=10 "$limit" mpirun "${MPIRUN_FLAGS[@]}" "$@" >"$WORK/$name.out" 2>&1
  RC=$?
  set -e
  ELAPSED=$(seconds_since "$t0")
  OUT="$WORK/$name.out"
}

# seconds_since T0 : wall seconds since T0 (from date +%s.%N), one decimal
seconds_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

pass() { echo "PASS $1"; PASSES=$((PASSES + 1)); }
fail() { echo "FAIL $1: $2"; echo "---- output ----"; tail -n 40 "$OUT"; echo "----"; FAILS=$((FAILS + 1)); }

no_rank_left() {
  # Every rank of this test (moe_train or superclass_tool, all given --log_dir under $WORK) must
  # be gone once mpirun returned.
  ! pgrep -f -- "--log_dir=$WORK" >/dev/null
}

finish() {
  echo "$PASSES passed, $FAILS failed"
  [ "$FAILS" -eq 0 ]
}
