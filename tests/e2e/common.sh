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

# run_job NAME TIMEOUT mpirun-args... : runs, keeps exit code in $RC and output in $WORK/NAME.out
run_job() {
  local name="$1" limit="$2"; shift 2
  set +e
  timeout --kill-after=10 "$limit" mpirun "${MPIRUN_FLAGS[@]}" "$@" >"$WORK/$name.out" 2>&1
  RC=$?
  set -e
  OUT="$WORK/$name.out"
}

pass() { echo "PASS $1"; PASSES=$((PASSES + 1)); }
fail() { echo "FAIL $1: $2"; echo "---- output ----"; tail -n 40 "$OUT"; echo "----"; FAILS=$((FAILS + 1)); }

no_rank_left() {
  # Every moe_train process of this test must be gone once mpirun returned.
  ! pgrep -f "$TRAIN .*--log_dir=$WORK" >/dev/null
}

finish() {
  echo "$PASSES passed, $FAILS failed"
  [ "$FAILS" -eq 0 ]
}
