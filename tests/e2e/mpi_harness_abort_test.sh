#!/usr/bin/env bash
# The multi-rank test harness ends the job promptly when one rank fails an ASSERT before a
# collective (tests/mpi/mpi_test_main.cc): the probe fails on rank 2 before a barrier; the job
# must exit non-zero, print the failure, and leave no rank behind, within 60 s (not CTest's
# timeout).
set -euo pipefail
source "$(dirname "$0")/common.sh"
PROBE="$BUILD_DIR/tests/fatal_failure_probe"
start=$SECONDS
run_job probe 60 -np 4 "$PROBE" --gtest_brief=1
took=$((SECONDS - start))
if [ "$RC" -eq 0 ]; then fail probe "exited 0"
elif [ "$RC" -eq 124 ] || [ "$RC" -eq 137 ]; then fail probe "hung (timeout after ${took}s)"
elif ! grep -q "rank 2 fails on purpose" "$OUT"; then fail probe "failure message not printed"
elif ! grep -q "aborting the job" "$OUT"; then fail probe "harness did not say it aborts"
elif pgrep -f "$PROBE" >/dev/null; then fail probe "a rank is still running"
else pass "probe ended the job in ${took}s (exit $RC)"
fi
finish
