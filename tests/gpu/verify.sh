#!/usr/bin/env bash
# Runs ON THE GPU MACHINE, from a copy of the checkout with the bundle that tests/gpu/make_bundle.sh
# made on the build machine (build-gpu-carry/) beside it:
#   OUT=/tmp/verify_out bash tests/gpu/verify.sh
# It unpacks build-gpu-carry/moe_gpu_bundle.tar.xz (or uses build-gpu-bundle/ when that travelled
# instead), sets the environment from the bundle, checks glibc / driver / library compatibility,
# then runs, each step under `timeout` and carrying on after failures:
#   mpi_singleton     a tests/mpi binary started without mpirun (singleton MPI_Init, bundled MPI)
#   gpu_<Suite>       moe_gpu_tests, one process PER SUITE (a CUDA error is sticky for its
#                     process: one suite's fault cannot hide the others' results); every GPU test
#                     must PASS (a SKIPPED test fails on a GPU machine)
#   gpu_np4_<Suite>   the multi-rank suites (their sources call MPI_Comm_size: NCCL communicator,
#                     MoE layer, routing rules) on 4 ranks of the bundle's mpirun on the one GPU,
#                     one mpirun per suite (shared-GPU env per rank: NCCL_HOSTID, no P2P/SHM, lo)
#   torch_selftest    tests/bench/torch_moe_reference.py --selftest on the GPU
#   torch_reference   the PyTorch eager/bmm MoE reference timings (table in torch_reference.txt)
#   bench_<name>      the benchmarks in the bundle: GPU ones first (single-process ones with their
#                     default sizes, MPI ones on 4 ranks with --allow_shared_gpu), which must not
#                     report "no GPU"; then CPU ones briefly
#   mpi_<name>        the multi-rank CPU tests (tests/mpi) on 4 ranks, as a check of the bundled MPI
#   launcher_smoke    moe_train, V-MoE tiny, a few steps on 4 ranks on the bundled Fashion-MNIST
#   launcher_cuda_np1/np4  the same with device "cuda" on 1 rank and on 4 ranks sharing the GPU
#                     (20 steps each; the loss must fall; np1 with drop-path, label smoothing and
#                     flips on, the recipe's device kernels)
# and writes $OUT/gpu_report.md (each step's command, exit code, time and output tail) and
# $OUT/gpu_steps.log (all output). Exits 0 only if every step passed.
#
# Env: OUT (default ./out/gpu_verify), MOE_VERIFY_BUDGET_S (total seconds, default 480: later steps
# are reported NOT RUN past it), MOE_VERIFY_STEP_TIMEOUT (default 180), MOE_VERIFY_ONLY (regex of
# step names to run), MOE_VERIFY_NO_GPU_OK=1 (dry run on a machine without a GPU: skips allowed),
# MOE_BUNDLE_DIR (where to unpack; default /tmp/moe-ep-gpu-bundle), MOE_VERIFY_TORCH_ARGS,
# MOE_VERIFY_UNIT=1 (also run the CPU unit tests; the bundle carries them with BUNDLE_UNIT=1).
#
# "Is there a GPU?" is decided from structured signals only, never from the wording of an error
# message: nvidia-smi -L listing a GPU, and the bundle's gpu_device_count (cudaGetDeviceCount;
# exit 0: devices, 77: none usable). Without a GPU (dry run, MOE_VERIFY_NO_GPU_OK=1) a step that
# needs one to run at all (kind gpu_only: the trainer on device "cuda", the GPU benches) is
# reported SKIP whatever its exit code (a timeout still fails: a hang is a bug anywhere); GPU test
# binaries (kind gpu) must still exit 0, their tests reporting SKIPPED.
set -u
START_S=$(date +%s)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${OUT:-$ROOT/out/gpu_verify}"
mkdir -p "$OUT"
REPORT="$OUT/gpu_report.md"
FULL_LOG="$OUT/gpu_steps.log"
BUDGET_S="${MOE_VERIFY_BUDGET_S:-480}"
STEP_TIMEOUT="${MOE_VERIFY_STEP_TIMEOUT:-180}"
NO_GPU_OK="${MOE_VERIFY_NO_GPU_OK:-0}"
ONLY="${MOE_VERIFY_ONLY:-}"
NP=4
TMPD="$(mktemp -d /tmp/moe_verify.XXXXXX)"
: >"$FULL_LOG"
ORIG_PATH="$PATH"
ORIG_LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"

SUMMARY=()
N_FAIL=0
say() { echo "[verify] $*"; echo "[verify] $*" >>"$FULL_LOG"; }
note() { printf '%s\n' "$*" >>"$REPORT"; }
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]; }  # $1 >= $2
record() {  # record NAME STATUS RC SECONDS
  SUMMARY+=("| $1 | $2 | $3 | $4 |")
  case "$2" in PASS|SKIP) ;; *) N_FAIL=$((N_FAIL + 1)) ;; esac
}

{
  echo "# moe-ep GPU verification"
  echo
  echo "- started: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname 2>/dev/null || echo '?')"
  echo "- repo: $ROOT ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
} >"$REPORT"

# ---------------------------------------------------------------------------------------------
# The bundle.
TARBALL="$ROOT/build-gpu-carry/moe_gpu_bundle.tar.xz"
if [ -n "${MOE_BUNDLE_DIR:-}" ] && [ -f "$MOE_BUNDLE_DIR/env.sh" ] && [ ! -f "$TARBALL" ]; then
  B="$MOE_BUNDLE_DIR"
elif [ -f "$TARBALL" ]; then
  B="${MOE_BUNDLE_DIR:-/tmp/moe-ep-gpu-bundle}"
  rm -rf "$B"; mkdir -p "$B"
  say "unpacking $TARBALL ($(du -h "$TARBALL" | cut -f1)) into $B"
  if command -v xz >/dev/null 2>&1; then
    xz -dc "$TARBALL" | tar -C "$B" -xf -
  else
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$TARBALL" "$B"
  fi
elif [ -f "$ROOT/build-gpu-bundle/env.sh" ]; then
  B="$ROOT/build-gpu-bundle"
else
  B=""
fi
if [ -z "$B" ] || [ ! -f "$B/env.sh" ]; then
  note ""; note "**FAILED: no bundle.** Build one on the development machine with"
  note '`bash tests/gpu/make_bundle.sh` and carry `build-gpu-carry` (see tests/gpu/README.md).'
  echo "[verify] no bundle: run tests/gpu/make_bundle.sh here first and carry build-gpu-carry" >&2
  exit 2
fi
# shellcheck disable=SC1091
source "$B/env.sh"
binfo() { sed -n "s/^$1=//p" "$B/BUILD_INFO"; }
has_bin() { [ -x "$B/bin/$1" ]; }
note "- bundle: $B (built from $(binfo git_commit | cut -c1-10), dirty=$(binfo git_dirty), at $(binfo built_at); nvcc $(binfo nvcc), sm_$(binfo cuda_architectures))"

# ---------------------------------------------------------------------------------------------
# Compatibility: glibc, libstdc++, driver, CUDA/cuBLAS/NCCL libraries, every binary resolvable.
note ""; note "## Environment"; note ""
ENV_OK=1
env_fail() { ENV_OK=0; note "- **FAIL**: $*"; say "FAIL: $*"; }
if command -v nvidia-smi >/dev/null 2>&1; then GPU_LIST="$(nvidia-smi -L 2>&1)"; GPU_RC=$?
else GPU_LIST="nvidia-smi not found"; GPU_RC=127; fi
HAVE_GPU=0
if [ $GPU_RC -eq 0 ] && echo "$GPU_LIST" | grep -q '^GPU '; then HAVE_GPU=1; fi
note "- GPUs: $(echo "$GPU_LIST" | head -4 | tr '\n' ';')"
if [ "$HAVE_GPU" = 1 ]; then
  DRIVER="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)"
  DRV_CUDA="$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' | head -1)"
  note "- driver $DRIVER, supports CUDA $DRV_CUDA; bundle built with nvcc $(binfo nvcc)"
  NEED_CUDA="$(binfo nvcc)"
  if [ -n "$DRV_CUDA" ] && [ "${DRV_CUDA%%.*}" -lt "${NEED_CUDA%%.*}" ]; then
    env_fail "driver supports CUDA $DRV_CUDA < $NEED_CUDA: the binaries cannot run"
  elif [ -n "$DRV_CUDA" ] && ! version_ge "$DRV_CUDA" "$NEED_CUDA"; then
    note "- note: driver CUDA $DRV_CUDA < nvcc $NEED_CUDA; relying on minor-version compatibility (sm_90 SASS, no PTX JIT)"
  fi
fi
HOST_GLIBC="$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')"
NEED_GLIBC="$(binfo need_glibc)"
if [ -n "$HOST_GLIBC" ] && version_ge "$HOST_GLIBC" "$NEED_GLIBC"; then
  note "- glibc $HOST_GLIBC >= $NEED_GLIBC needed: ok"
else
  env_fail "glibc ${HOST_GLIBC:-unknown} < $NEED_GLIBC needed by the bundle (built on glibc $(binfo build_host_glibc))"
fi
# libstdc++/libgcc_s: the machine's own unless it lacks what the binaries need.
NEED_GLIBCXX="$(binfo need_glibcxx)"
SYS_STDCXX="$(ldconfig -p 2>/dev/null | awk '/libstdc\+\+\.so\.6 .*x86-64/{print $NF; exit}')"
[ -z "$SYS_STDCXX" ] && for d in /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /usr/lib64 /lib64; do
  [ -e "$d/libstdc++.so.6" ] && SYS_STDCXX="$d/libstdc++.so.6" && break; done
if [ -n "$SYS_STDCXX" ] && grep -qa "GLIBCXX_$NEED_GLIBCXX" "$SYS_STDCXX" 2>/dev/null; then
  note "- libstdc++: the machine's ($SYS_STDCXX has GLIBCXX_$NEED_GLIBCXX)"
else
  export LD_LIBRARY_PATH="$B/lib-fallback:$LD_LIBRARY_PATH"
  note "- libstdc++: the bundle's fallback (machine's: ${SYS_STDCXX:-none} lacks GLIBCXX_$NEED_GLIBCXX)"
fi
# CUDA runtime, cuBLAS, NCCL, driver library: wherever the machine has them.
PY_SITE="$(PATH="$ORIG_PATH" LD_LIBRARY_PATH="$ORIG_LD_LIBRARY_PATH" python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null)"
find_lib_dir() {  # find_lib_dir SONAME: a folder holding it, or nothing
  local n="$1" d
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib \
           /usr/local/cuda-*/lib64 /usr/local/cuda-*/targets/x86_64-linux/lib \
           /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64 \
           /opt/torch/.venv/lib/python3*/site-packages/nvidia/*/lib \
           $(for s in $PY_SITE; do echo "$s/nvidia/cu13/lib $s/nvidia/*/lib $s/torch/lib"; done); do
    [ -e "$d/$n" ] && { echo "$d"; return 0; }
  done
  return 1
}
missing_libs() {  # sonames some bundled executable cannot resolve
  for f in "$B"/bin/*; do ldd "$f" 2>/dev/null | awk '$2=="=>" && $3=="not" {print $1}'; done | sort -u
}
for round in 1 2 3; do
  miss="$(missing_libs)"
  [ -z "$miss" ] && break
  for n in $miss; do
    if d="$(find_lib_dir "$n")"; then
      case ":$LD_LIBRARY_PATH:" in *":$d:"*) ;; *) export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d" ;; esac
      note "- $n: found in $d (added to LD_LIBRARY_PATH)"
    fi
  done
done
miss="$(missing_libs)"
[ -n "$miss" ] && env_fail "libraries not found for the bundled executables: $(echo $miss)"
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
  if d="$(find_lib_dir libcuda.so.1)"; then export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"; note "- libcuda.so.1: $d"
  elif [ "$HAVE_GPU" = 1 ]; then env_fail "libcuda.so.1 (the driver's) not found"; fi
fi
for n in libcudart.so libcublas.so libnccl.so; do
  p="$(ldd "$B/bin/moe_gpu_tests" 2>/dev/null | awk -v n="$n" 'index($1, n)==1 {print $3; exit}')"
  note "- $n* -> ${p:-?}"
done
# The CUDA runtime's own answer, as an exit code (0: devices, 77: none usable), now that its
# libraries are found: with nvidia-smi's, the only signals "no GPU" is decided from.
CUDA_PROBE="gpu_device_count is not in the bundle"; CUDA_PROBE_RC=-1
if has_bin gpu_device_count; then
  CUDA_PROBE="$(timeout 60 "$B/bin/gpu_device_count" 2>&1 </dev/null)"; CUDA_PROBE_RC=$?
  CUDA_PROBE="$(echo "$CUDA_PROBE" | head -1)"
fi
note "- gpu_device_count (cudaGetDeviceCount): exit $CUDA_PROBE_RC, $CUDA_PROBE"
if [ "$HAVE_GPU" = 1 ] && [ "$CUDA_PROBE_RC" -ne 0 ]; then
  env_fail "nvidia-smi lists a GPU, but the CUDA runtime finds none usable ($CUDA_PROBE)"
elif [ "$HAVE_GPU" = 0 ] && [ "$CUDA_PROBE_RC" -eq 0 ]; then
  HAVE_GPU=1
  note "- a GPU after all: the CUDA runtime sees one ($CUDA_PROBE), nvidia-smi did not"
fi
if [ "$HAVE_GPU" = 0 ] && [ "$NO_GPU_OK" = 1 ]; then
  note "- no GPU (dry run: MOE_VERIFY_NO_GPU_OK=1): steps of kind gpu_only are reported SKIP"
elif [ "$HAVE_GPU" = 0 ]; then
  env_fail "no GPU (nvidia-smi -L: $(echo "$GPU_LIST" | head -1); $CUDA_PROBE)"
fi
note "- mpirun: $(command -v mpirun) ($(mpirun --version 2>&1 | head -1)); OPAL_PREFIX=$OPAL_PREFIX"
note "- LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
[ "$ENV_OK" = 1 ] && record environment PASS 0 "$(( $(date +%s) - START_S ))" \
                  || record environment FAIL 1 "$(( $(date +%s) - START_S ))"

# Some tests read Fashion-MNIST from the Debian package's folder: point it at the bundle's copy.
SYS_DATA=/usr/share/datasets/fashion-mnist
export MOE_EP_DATA_DIR="$MOE_FASHION_MNIST_DIR"  # read by tests/mpi/ep_invariance_test
if [ ! -e "$SYS_DATA" ] && [ -d "$MOE_FASHION_MNIST_DIR" ] && [ "$(id -u)" = 0 ]; then
  mkdir -p "$(dirname "$SYS_DATA")" && ln -s "$MOE_FASHION_MNIST_DIR" "$SYS_DATA" \
    && note "- $SYS_DATA -> $MOE_FASHION_MNIST_DIR (made for the tests that read it)"
fi

# Every rank of a multi-rank run poses as its own host on the one GPU (NCCL refuses two ranks on
# one device of one host otherwise) and talks over loopback sockets; BindDeviceForRank sets the
# same when a binary gets --allow_shared_gpu.
cat >"$TMPD/rank_env.sh" <<'EOF'
#!/usr/bin/env bash
r="${OMPI_COMM_WORLD_RANK:-${PMIX_RANK:-0}}"
export NCCL_HOSTID="moe-ep-rank$r" NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 NCCL_SOCKET_IFNAME=lo
export NCCL_IB_DISABLE=1 NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
exec "$@"
EOF
chmod +x "$TMPD/rank_env.sh"
MPIRUN=(mpirun -np "$NP" "${MOE_MPIRUN_FLAGS[@]}" "$TMPD/rank_env.sh")

# ---------------------------------------------------------------------------------------------
# Steps.
note ""; note "## Steps"
# step NAME KIND TIMEOUT CMD...   KIND: cpu; gpu (GPU tests: they skip by themselves without a
#   GPU; on a GPU machine a SKIPPED test or a "no GPU" message fails the step); gpu_only and
#   torch (need a GPU to run at all: SKIP in a dry run without one, whatever the exit code).
step() {
  local name="$1" kind="$2" tmo="$3"; shift 3
  if [ -n "$ONLY" ] && ! [[ "$name" =~ $ONLY ]]; then return 0; fi
  local now elapsed status rc t0 dt skipped nogpu why="" out="$TMPD/${name//\//_}.out"
  now=$(date +%s); elapsed=$((now - START_S))
  note ""; note "### $name"; note ""; note '```'; note "$*"; note '```'
  if [ "$elapsed" -ge "$BUDGET_S" ]; then
    note "NOT RUN: the time budget ($BUDGET_S s) was spent"
    record "$name" "NOT RUN" - 0; say "$name: NOT RUN (budget)"; return 0
  fi
  [ $((elapsed + tmo)) -gt "$BUDGET_S" ] && tmo=$((BUDGET_S - elapsed + 30))
  say "$name: $*"
  echo "===== $name: $*" >>"$FULL_LOG"
  t0=$(date +%s)
  timeout -k 15 "$tmo" "$@" >"$out" 2>&1 </dev/null
  rc=$?
  dt=$(( $(date +%s) - t0 ))
  cat "$out" >>"$FULL_LOG"
  skipped=0; nogpu=0
  grep -qE '^\[  SKIPPED \]|^moe_gpu_tests: SKIPPED:' "$out" && skipped=1
  # Only an alarm on a GPU machine (a program that says it found none): never a reason to skip.
  grep -qiE 'no GPU|no usable GPU|no CUDA|CUDA is not available' "$out" && nogpu=1
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status="FAIL (timeout ${tmo}s)"
  elif [ "$kind" != cpu ] && [ "$HAVE_GPU" = 0 ] && [ "$NO_GPU_OK" = 1 ]; then
    # Dry run, no GPU by nvidia-smi and cudaGetDeviceCount (structured signals, not messages).
    if [ "$kind" = gpu_only ] || [ "$kind" = torch ]; then
      status=SKIP; why=" (needs a GPU; none here: $CUDA_PROBE)"
    elif [ "$rc" -ne 0 ]; then status=FAIL
    elif [ "$skipped" = 1 ]; then status=SKIP
    else status=PASS; fi
  elif [ "$rc" -ne 0 ]; then status=FAIL
  elif [ "$kind" != cpu ] && [ $((skipped + nogpu)) -gt 0 ]; then
    status="FAIL (skipped on a GPU machine)"
  else status=PASS; fi
  note "exit code $rc, ${dt}s: **$status**$why"; note ""; note '```'
  tail -n 40 "$out" >>"$REPORT"; note '```'
  record "$name" "$status" "$rc" "$dt"
  say "$name: $status (rc $rc, ${dt}s)"
}
flag_of() {  # flag_of BINARY FLAG: true if the gflags binary defines --FLAG
  grep -q -- "-$2 (" "$TMPD/help_$1" 2>/dev/null
}
for f in "$B"/bin/*_bench "$B"/bin/moe_train; do
  [ -x "$f" ] || continue
  timeout 30 "$f" --helpfull >"$TMPD/help_$(basename "$f")" 2>&1 </dev/null
done

# 0. The bundled MPI without mpirun (singleton MPI_Init: the GPU tests' NCCL cases start so).
n1="$(awk '$1=="mpi" {print $2; exit}' "$B/MANIFEST")"
[ -n "$n1" ] && step mpi_singleton cpu 60 "$B/bin/$n1" --gtest_brief=1

# 1. GPU tests in chunks, one process per suite (a CUDA error is sticky for its process, so one
#    suite's fault cannot hide the others'), then the multi-rank suites on four ranks sharing the
#    GPU, one mpirun per suite.
multi_rank_suites() {  # suites of the test sources that look at the MPI world size
  local files
  files="$(grep -l 'MPI_Comm_size' "$ROOT"/tests/gpu/*_test.cc 2>/dev/null)"
  [ -n "$files" ] || return 0
  # shellcheck disable=SC2086
  grep -hoE '^TEST(_F|_P)?\([A-Za-z0-9_]+' $files | sed -E 's/^TEST(_F|_P)?\(//' | sort -u
}
# The suites moe_gpu_tests holds: "Suite", or "Prefix/Suite" for value-parameterised ones.
SUITES=""
has_bin moe_gpu_tests && SUITES="$(timeout 60 "$B/bin/moe_gpu_tests" --gtest_list_tests \
  2>/dev/null </dev/null | awk '/^[^ #]/ {sub(/\.$/, "", $1); print $1}')"
if [ -n "$SUITES" ]; then
  MULTI="$(multi_rank_suites)"
  for suite in $SUITES; do
    step "gpu_$suite" gpu "$STEP_TIMEOUT" "$B/bin/moe_gpu_tests" --gtest_filter="$suite.*" \
      --gtest_brief=1
  done
  for suite in $SUITES; do
    grep -qx "${suite##*/}" <<<"$MULTI" || continue
    step "gpu_np4_$suite" gpu "$STEP_TIMEOUT" "${MPIRUN[@]}" "$B/bin/moe_gpu_tests" \
      --gtest_filter="$suite.*" --gtest_brief=1
  done
else
  record gpu_tests "FAIL (moe_gpu_tests missing from the bundle, or it cannot list its tests)" - 0
fi
for n in $(awk '$1=="gpu" && $2!="moe_gpu_tests" && $2!="gpu_device_count" {print $2}' "$B/MANIFEST"); do
  step "gpu_$n" gpu "$STEP_TIMEOUT" "$B/bin/$n"
done

# 2. The PyTorch reference (the machine's own Python and libraries, not the bundle's).
TORCH_ENV=(env PATH="$ORIG_PATH" LD_LIBRARY_PATH="$ORIG_LD_LIBRARY_PATH" PYTHONUNBUFFERED=1)
REF="$ROOT/tests/bench/torch_moe_reference.py"
if [ "$HAVE_GPU" = 0 ] && [ "$NO_GPU_OK" = 1 ] && ! "${TORCH_ENV[@]}" python3 -c 'import torch' 2>/dev/null; then
  note ""; note "### torch_reference"; note ""; note "SKIP: no GPU and no PyTorch here"
  record torch_reference SKIP - 0
else
  step torch_selftest torch 120 "${TORCH_ENV[@]}" python3 "$REF" --selftest
  # shellcheck disable=SC2086
  step torch_reference torch 300 "${TORCH_ENV[@]}" python3 "$REF" ${MOE_VERIFY_TORCH_ARGS:---tokens 16384 --dim 768 --hidden 3072 --experts 8,32,64 --top_k 1,2 --cf 1.25 --iters 20}
  [ -f "$TMPD/torch_reference.out" ] && cp "$TMPD/torch_reference.out" "$OUT/torch_reference.txt"
fi

# 3. Benchmarks (MANIFEST says which use the GPU and which are MPI programs). GPU ones with
#    their own default sizes, MPI ones on 4 ranks of the one GPU (--allow_shared_gpu where
#    defined); CPU ones briefly. Flags are passed only where the binary defines them.
while read -r cat n dev par; do
  [ "$cat" = bench ] && [ -x "$B/bin/$n" ] || continue
  f="$B/bin/$n"; args=(); kind=cpu; [ "$dev" = gpu ] && kind=gpu_only
  flag_of "$n" allow_shared_gpu && { kind=gpu_only; args+=(--allow_shared_gpu); }
  if [ "$kind" = gpu_only ]; then
    [ "$par" = mpi ] && flag_of "$n" iters && args+=(--iters=10)
    # moe_comm_bench: its layers on the GPU, a short sweep of the three dispatchers
    flag_of "$n" device && args+=(--device=cuda --dispatchers=flat,hierarchical,pipelined \
      --tokens=256,4096 --dims=64)
  else
    flag_of "$n" iters && args+=(--iters=3)
    flag_of "$n" warmup && args+=(--warmup=1)
    flag_of "$n" max_bytes && args+=(--max_bytes=1048576)
    flag_of "$n" experts && args+=(--experts=8)
    flag_of "$n" capacity_factors && args+=(--capacity_factors=1.25)
  fi
  if [ "$par" = mpi ]; then step "bench_$n" "$kind" "$STEP_TIMEOUT" "${MPIRUN[@]}" "$f" "${args[@]}"
  else step "bench_$n" "$kind" "$STEP_TIMEOUT" "$f" "${args[@]}"; fi
  # (the device tool returns at most 8 files from $OUT)
  if [ -f "$TMPD/bench_$n.out" ] && [ "$kind" = gpu_only ] && [ "$(ls "$OUT" | wc -l)" -lt 7 ]; then
    cp "$TMPD/bench_$n.out" "$OUT/bench_$n.txt"
  fi
done < <(sort -k3,3r "$B/MANIFEST")   # GPU benches first

# 4. Multi-rank CPU tests: the bundled MPI on this machine (tests naming NCCL/GPU must not skip).
while read -r cat n dev par; do
  [ "$cat" = mpi ] || continue
  kind=cpu; [ "$dev" = gpu ] && kind=gpu
  step "mpi_$n" "$kind" "$STEP_TIMEOUT" "${MPIRUN[@]}" "$B/bin/$n" --gtest_brief=1
done <"$B/MANIFEST"

# Optional: the single-process CPU unit tests (CI runs them anyway).
if [ "${MOE_VERIFY_UNIT:-0}" = 1 ]; then
  units=$(awk '$1=="unit" {print $2}' "$B/MANIFEST")
  # make_bundle.sh carries them only with BUNDLE_UNIT=1 (they would fill a sixth of the tarball).
  [ -n "$units" ] || step unit_tests cpu 10 sh -c \
    'echo "MOE_VERIFY_UNIT=1, but this bundle has no unit tests: make it with BUNDLE_UNIT=1"; exit 2'
  for n in $units; do
    step "unit_$n" cpu "$STEP_TIMEOUT" "$B/bin/$n" --gtest_brief=1
  done
fi

# 5. The launcher: V-MoE tiny, a few steps, on the bundled data.
D="$MOE_FASHION_MNIST_DIR"
if has_bin moe_train && [ -f "$D/t10k-images-idx3-ubyte.gz" ]; then
  train=train; [ -f "$D/train-images-idx3-ubyte.gz" ] || train=t10k
  step launcher_smoke cpu "$STEP_TIMEOUT" "${MPIRUN[@]}" "$B/bin/moe_train" \
    --config="$ROOT/launcher/configs/vmoe_tiny.pbtxt" --steps=20 --log_dir="$TMPD/logs" \
    --override="log_every: 5 data { train_images: \"$D/$train-images-idx3-ubyte.gz\" train_labels: \"$D/$train-labels-idx1-ubyte.gz\" test_images: \"$D/t10k-images-idx3-ubyte.gz\" test_labels: \"$D/t10k-labels-idx1-ubyte.gz\" eval_images: 1000 }"
  # The trainer's CUDA path (device: "cuda"): 20 steps on 1 rank (EP=1) and on 4 ranks sharing the
  # GPU (EP=4, --allow_shared_gpu); the mean loss of the last 5 steps must be below the first 5.
  cat >"$TMPD/loss_falls.sh" <<'EOF2'
#!/usr/bin/env bash
# loss_falls.sh METRICS CMD...: runs CMD, then checks the loss in the JSON-lines METRICS fell.
m="$1"; shift
"$@" || exit $?
l() { grep '"loss"' "$m" | sed -E 's/.*"loss": ([^,]*),.*/\1/'; }
first=$(l | head -n 5 | awk '{s+=$1} END {if (NR) print s/NR}')
last=$(l | tail -n 5 | awk '{s+=$1} END {if (NR) print s/NR}')
echo "loss: first 5 steps $first, last 5 steps $last"
awk -v a="$first" -v b="$last" 'BEGIN {exit !(a != "" && b != "" && b < a)}' || { echo "FAIL: loss did not fall"; exit 1; }
EOF2
  chmod +x "$TMPD/loss_falls.sh"
  data_ovr="data { train_images: \"$D/$train-images-idx3-ubyte.gz\" train_labels: \"$D/$train-labels-idx1-ubyte.gz\" test_images: \"$D/t10k-images-idx3-ubyte.gz\" test_labels: \"$D/t10k-labels-idx1-ubyte.gz\" eval_images: 1000 }"
  step launcher_cuda_np1 gpu_only "$STEP_TIMEOUT" "$TMPD/loss_falls.sh" "$TMPD/m_cuda1.jsonl" \
    mpirun -np 1 "${MOE_MPIRUN_FLAGS[@]}" "$B/bin/moe_train" \
    --config="$ROOT/launcher/configs/vmoe_tiny.pbtxt" --steps=20 --log_dir="$TMPD/logs_cuda1" \
    --metrics_out="$TMPD/m_cuda1.jsonl" \
    --override="device: \"cuda\" log_every: 5 parallel { ep_size: 1 } $data_ovr
    model { drop_path_rate: 0.1 } recipe { label_smoothing: 0.1 horizontal_flip: true }"
  step launcher_cuda_np4 gpu_only "$STEP_TIMEOUT" "$TMPD/loss_falls.sh" "$TMPD/m_cuda4.jsonl" \
    "${MPIRUN[@]}" "$B/bin/moe_train" --allow_shared_gpu \
    --config="$ROOT/launcher/configs/vmoe_tiny.pbtxt" --steps=20 --log_dir="$TMPD/logs_cuda4" \
    --metrics_out="$TMPD/m_cuda4.jsonl" \
    --override="device: \"cuda\" log_every: 5 $data_ovr"
  # The CUDA PIPELINED dispatcher (experts on a compute stream, NCCL on the communicator's).
  step launcher_cuda_np4_pipelined gpu_only "$STEP_TIMEOUT" "$TMPD/loss_falls.sh" \
    "$TMPD/m_cuda4p.jsonl" "${MPIRUN[@]}" "$B/bin/moe_train" --allow_shared_gpu \
    --config="$ROOT/launcher/configs/vmoe_tiny.pbtxt" --steps=20 --log_dir="$TMPD/logs_cuda4p" \
    --metrics_out="$TMPD/m_cuda4p.jsonl" \
    --override="device: \"cuda\" log_every: 5 parallel { dispatcher: PIPELINED } $data_ovr"
fi

# ---------------------------------------------------------------------------------------------
TOTAL=$(( $(date +%s) - START_S ))
{
  echo
  echo "## Summary"
  echo
  echo "| step | status | exit code | seconds |"
  echo "| --- | --- | --- | --- |"
  printf '%s\n' "${SUMMARY[@]}"
  echo
  echo "$N_FAIL step(s) not passed; ${TOTAL}s in all."
} >>"$REPORT"
echo
sed -n '/^## Summary/,$p' "$REPORT"
rm -rf "$TMPD"
[ "$N_FAIL" -eq 0 ]
