#!/usr/bin/env bash
# What a GPU machine has, in one short run (~1 min, no build): driver, CUDA, glibc, MPI, NCCL,
# PyTorch, libraries. Writes everything to $OUT/probe.txt (and prints it); record the answers in
# tests/gpu/README.md so the next verification on that machine need not probe again.
#   OUT=/tmp/probe_out bash tests/gpu/probe.sh
# Never changes the GPU's settings: nvidia-smi is only queried.
set -u
OUT="${OUT:-/tmp/probe_out}"
mkdir -p "$OUT"
REPORT="$OUT/probe.txt"
: >"$REPORT"

section() { printf '\n===== %s\n' "$*" | tee -a "$REPORT"; }
# run CMD...: print the command, then its output (stdout+stderr, at most 60 lines), never fail.
run() {
  printf '$ %s\n' "$*" | tee -a "$REPORT"
  timeout 60 bash -c "$*" 2>&1 | head -n 60 | tee -a "$REPORT"
}

section "machine"
run 'uname -a; cat /etc/os-release | head -4; nproc; free -g | head -2; df -h / /tmp | tail -n +1'
run 'id; echo PATH=$PATH; echo LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}'
section "glibc / libstdc++ (binaries built on Debian 12 need glibc >= 2.36 there)"
run 'ldd --version | head -1'
run 'getconf GNU_LIBC_VERSION'
run 'for f in $(ldconfig -p | awk "/libstdc\\+\\+\\.so\\.6 /{print \$NF}" | head -2); do echo $f; strings $f | grep -E "^GLIBCXX_3\\.4\\.[0-9]+$" | sort -V | tail -1; done'
section "GPU and driver"
run 'nvidia-smi'
run 'nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap,persistence_mode --format=csv'
run 'ls -la /dev/nvidia* 2>&1 | head; ls /usr/local/nvidia 2>&1; ls /usr/local/nvidia/lib64 2>&1 | head -20'
section "CUDA toolkit"
run 'which nvcc; nvcc --version; ls -la /usr/local/ | grep -i cuda; readlink -f /usr/local/cuda'
run 'ls /usr/local/cuda/lib64 2>&1 | grep -E "libcudart|libcublas|libnccl|libnvJitLink" '
run 'ls /usr/local/cuda/include/nccl.h 2>&1'
section "CUDA / cuBLAS / NCCL / libcuda in the loader cache"
run 'ldconfig -p | grep -E "libcuda\\.so|libcudart|libcublas|libnccl|libnvidia-ml" '
run 'cat /etc/ld.so.conf.d/*.conf 2>/dev/null'
run 'for f in $(ldconfig -p | awk "/libnccl\\.so\\.2 |libcublas\\.so\\.[0-9]+ |libcudart\\.so\\.[0-9]+ /{print \$NF}") /usr/local/cuda/lib64/libnccl.so.2; do [ -e $f ] && echo "$f -> $(readlink -f $f)"; done; for f in $(ldconfig -p | awk "/libnccl\\.so\\.2 /{print \$NF}") /usr/local/cuda/lib64/libnccl.so.2; do [ -e $f ] && strings $f | grep -m1 "NCCL version"; done'
section "CUDA / NCCL libraries of the Python packages"
run 'python3 -c "import sys; print(sys.executable, sys.version)"'
run 'python3 - <<EOF
import glob, os, site
dirs = site.getsitepackages()
for d in dirs:
    for pat in ("nvidia/*/lib/*.so*", "nvidia/cu13/lib/*.so*", "torch/lib/*.so*"):
        for f in sorted(glob.glob(os.path.join(d, pat))):
            if any(s in os.path.basename(f) for s in ("nccl", "cublas", "cudart", "nvJitLink")):
                print(f)
EOF'
section "PyTorch"
run 'python3 -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.nccl.version(), torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"'
section "build tools"
run 'which cmake ninja make gcc g++ c++ strip; cmake --version | head -1; ninja --version; gcc --version | head -1'
section "MPI"
run 'which mpirun mpiexec orterun ompi_info; mpirun --version 2>&1 | head -3'
run 'python3 -c "import mpi4py; print(mpi4py.__version__, mpi4py.get_config())"'
run 'python3 -c "from mpi4py import MPI; print(MPI.Get_library_version())"'
run 'ldconfig -p | grep -E "libmpi|libopen-pal|libpmix|libhwloc|libevent|libfabric|libucx|libucp"'
section "other libraries moe-ep links (present in the loader cache?)"
run 'for l in libprotobuf libgflags libglog libopenblas libblas.so.3 libgfortran libquadmath libunwind libz.so libgtest libudev libnl-3; do printf "%-14s " $l; ldconfig -p | grep -m1 "$l" || echo MISSING; done'
run 'which protoc; protoc --version'
section "network interfaces (NCCL_SOCKET_IFNAME=lo for the shared-GPU runs)"
run 'ls /sys/class/net; cat /proc/sys/kernel/yama/ptrace_scope 2>&1; ls -ld /dev/shm; df -h /dev/shm'
section "done"
echo "probe written to $REPORT"
