#!/usr/bin/env bash
# Builds moe-ep for H100/H200 GPUs (sm_90, Release) into build-gpu/ and assembles a bundle
# that runs there without installing anything (that machine reaches no package registry):
#
#   build-gpu-bundle/            the bundle, unpacked (checked here; ~135 MiB, too big to carry)
#     env.sh                     `source` it: PATH, LD_LIBRARY_PATH, OPAL_PREFIX, PMIX_PREFIX, MCA
#     MANIFEST                   "category name gpu|cpu mpi|single" per executable; categories gpu,
#                                mpi, unit, bench, launcher, other
#     BUILD_INFO                 git commit, nvcc, glibc/GLIBCXX versions the binaries need
#     bin/                       the test, bench and launcher executables, stripped
#     lib/                       every shared library they (and Open MPI) need that is not glibc,
#                                CUDA, cuBLAS or NCCL: OpenBLAS, protobuf, gflags, glog, hwloc, ...
#     lib-fallback/              libstdc++ and libgcc_s, used only where the machine's are older
#     ompi/usr/                  Open MPI 4.1 (mpirun, MCA plug-ins, help files) and PMIx,
#                                unpacked from Debian's .deb files; relocated through OPAL_PREFIX
#     data/fashion-mnist/        the Fashion-MNIST .gz files (BUNDLE_DATA=all|t10k|none)
#   build-gpu-carry/moe_gpu_bundle.tar.xz   the same, compressed: what goes to the GPU machine
#
# CUDA runtime, cuBLAS and NCCL are NOT bundled (hundreds of MiB): tests/gpu/verify.sh finds the
# GPU machine's own (CUDA 13 toolkit there, or the nvidia-* Python packages of its PyTorch).
#
# Usage: bash tests/gpu/make_bundle.sh [--no-build] [--no-check]
#   --no-build   reuse build-gpu/ as it is;  --no-check   skip the self-containment check
# Env: BUILD_DIR, BUNDLE, CARRY_DIR, BUNDLE_DATA (all|t10k|none), CARRY_LIMIT_MIB (55),
#      BUNDLE_UNIT (0|1: carry the CPU unit tests too, for verify.sh's MOE_VERIFY_UNIT=1; they
#      add about 10 MiB to the tarball, and CI runs them anyway).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build-gpu}"
BUNDLE="${BUNDLE:-$ROOT/build-gpu-bundle}"
CARRY_DIR="${CARRY_DIR:-$ROOT/build-gpu-carry}"
TARBALL="$CARRY_DIR/moe_gpu_bundle.tar.xz"
DEB_CACHE="$BUILD_DIR/debs"
DATA_SRC="${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"
BUNDLE_DATA="${BUNDLE_DATA:-all}"
CARRY_LIMIT_MIB="${CARRY_LIMIT_MIB:-55}"
BUNDLE_UNIT="${BUNDLE_UNIT:-0}"
MA=x86_64-linux-gnu
OMPI_PKGS=(openmpi-bin libopenmpi3 openmpi-common libpmix2)
DO_BUILD=1; DO_CHECK=1
for a in "$@"; do
  case "$a" in
    --no-build) DO_BUILD=0 ;;
    --no-check) DO_CHECK=0 ;;
    *) echo "usage: $0 [--no-build] [--no-check]" >&2; exit 2 ;;
  esac
done
log() { echo "[make_bundle] $*"; }
die() { echo "[make_bundle] ERROR: $*" >&2; exit 1; }
case "$BUNDLE_UNIT" in 0|1) ;; *) die "BUNDLE_UNIT=$BUNDLE_UNIT: must be 0 or 1" ;; esac

# Libraries the GPU machine must provide itself: glibc, and the CUDA/cuBLAS/NCCL/driver family.
GLIBC_RE='^(ld-linux-x86-64\.so\.2|linux-vdso\.so\.1|libc\.so\.6|libm\.so\.6|libmvec\.so\.1|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|libutil\.so\.1|libresolv\.so\.2|libanl\.so\.1|libnss_[a-z]+\.so\.2|libthread_db\.so\.1|libBrokenLocale\.so\.1)$'
DEVICE_RE='^(libcuda\.so\.1|libcudart\.so\.[0-9]+|libcublas\.so\.[0-9]+|libcublasLt\.so\.[0-9]+|libnccl\.so\.[0-9]+|libnvJitLink\.so\.[0-9]+|libnvrtc.*|libnvidia-.*)$'
FALLBACK_RE='^(libstdc\+\+\.so\.6|libgcc_s\.so\.1)$'
# Open MPI plug-ins and libraries for fabrics a one-GPU machine lacks (UCX, libfabric, verbs, PSM),
# and the Fortran/Java/OpenSHMEM parts: dropped rather than carried with their dependencies.
HEAVY_DEPS_RE='lib(ucp|ucs|uct|ucm|fabric|ibverbs|rdmacm|psm_infinipath|psm2|efa|infinipath|numa|oshmem|mca_common_(ucx|ofi|verbs))\.so'

is_elf() { [ -f "$1" ] && [ "$(head -c 4 "$1" 2>/dev/null | od -An -c | tr -d ' ')" = '177ELF' ]; }

# ---------------------------------------------------------------------------------------------
# 1. Build for sm_90.
if [ "$DO_BUILD" = 1 ]; then
  bash "$ROOT/cmake/install_deps.sh"
  [ -x /usr/local/cuda/bin/nvcc ] || die "/usr/local/cuda/bin/nvcc not found: the GPU build needs the CUDA toolkit"
  log "configuring $BUILD_DIR (Release, CUDA architectures 90)"
  cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_CUDA_ARCHITECTURES=90 -DMOE_EP_WITH_CUDA=ON -DMOE_EP_BUILD_TESTS=ON >/dev/null
  log "building (this takes a few minutes on 2 cores)"
  cmake --build "$BUILD_DIR" -j "$(nproc)"
fi
[ -f "$BUILD_DIR/CMakeCache.txt" ] || die "$BUILD_DIR is not configured (run without --no-build)"
grep -q '^CMAKE_CUDA_ARCHITECTURES:.*=90$' "$BUILD_DIR/CMakeCache.txt" \
  || die "$BUILD_DIR was not configured with CMAKE_CUDA_ARCHITECTURES=90"

# ---------------------------------------------------------------------------------------------
# 2. Executables, stripped, with their category.
rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/bin" "$BUNDLE/lib" "$BUNDLE/lib-fallback" "$BUNDLE/ompi" "$BUNDLE/data"
: >"$BUNDLE/MANIFEST"
category_of() {
  local n="$1"
  if [ "$n" = moe_gpu_tests ] || [ -f "$ROOT/tests/gpu/$n.cc" ] || [ -f "$ROOT/tests/gpu/$n.cu" ]; then echo gpu
  # Only the *_test binaries (the CTest ones) are tests: tests/mpi also builds helpers such as
  # fatal_failure_probe, which fails on purpose for an e2e test and must not run as a step.
  elif [[ "$n" == *_test ]] && [ -f "$ROOT/tests/mpi/$n.cc" ]; then echo mpi
  elif [[ "$n" == *_test ]] && [ -f "$ROOT/tests/unit/$n.cc" ]; then echo unit
  elif [ -f "$ROOT/tests/bench/$n.cc" ] || [[ "$n" == *_bench ]]; then echo bench
  elif [ "$n" = moe_train ]; then echo launcher
  else echo other; fi
}
# attrs_of NAME: "gpu|cpu mpi|single", read off the executable's own source file(s): gpu when it
# uses CUDA or NCCL, mpi when it calls MPI_Init itself (then it runs under mpirun).
attrs_of() {
  local n="$1" srcs=() g=cpu m=single
  case "$n" in
    moe_gpu_tests) echo "gpu single"; return ;;
    moe_train) srcs=("$ROOT/launcher/moe_train_main.cc") ;;
    *) for d in tests/unit tests/mpi tests/bench tests/gpu launcher; do
         for x in cc cu; do [ -f "$ROOT/$d/$n.$x" ] && srcs+=("$ROOT/$d/$n.$x"); done
       done
       # launcher tools: launcher/<name>_main.cc (moe_comm_bench is an MPI program)
       [ -f "$ROOT/launcher/${n}_main.cc" ] && srcs+=("$ROOT/launcher/${n}_main.cc") ;;
  esac
  [ "$(category_of "$n")" = mpi ] && m=mpi
  if [ ${#srcs[@]} -gt 0 ]; then
    grep -qE 'MOE_EP_HAS_CUDA|cuda_runtime|nccl\.h|nccl_communicator\.h' "${srcs[@]}" && g=gpu
    grep -qE 'MPI_Init' "${srcs[@]}" && m=mpi
  fi
  echo "$g $m"
}
while IFS= read -r f; do
  is_elf "$f" || continue
  readelf -l "$f" 2>/dev/null | grep -q 'program interpreter' || continue   # executables only
  n="$(basename "$f")"
  [ "$BUNDLE_UNIT" = 1 ] || [ "$(category_of "$n")" != unit ] || continue
  [ -e "$BUNDLE/bin/$n" ] && die "two executables named $n in $BUILD_DIR"
  strip --strip-unneeded -o "$BUNDLE/bin/$n" "$f"
  echo "$(category_of "$n") $n $(attrs_of "$n")" >>"$BUNDLE/MANIFEST"
done < <(find "$BUILD_DIR" -type f -perm -u+x -not -path '*/CMakeFiles/*' -not -path "$DEB_CACHE/*" -not -path "$BUILD_DIR/bare_root*" \
           -not -name '*.so' -not -name '*.so.*' -not -name '*.a' | sort)
sort -o "$BUNDLE/MANIFEST" "$BUNDLE/MANIFEST"
grep -q "^gpu moe_gpu_tests " "$BUNDLE/MANIFEST" || die "moe_gpu_tests was not built (is the CUDA path ON?)"
log "executables: $(wc -l <"$BUNDLE/MANIFEST") ($(awk '{print $1}' "$BUNDLE/MANIFEST" | sort | uniq -c | awk '{printf "%s%s %s", (NR>1 ? ", " : ""), $1, $2}'))"

# ---------------------------------------------------------------------------------------------
# 3. Open MPI + PMIx from Debian's .deb files (the versions installed here, which we linked).
mkdir -p "$DEB_CACHE"
for p in "${OMPI_PKGS[@]}"; do
  v="$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null)" || die "package $p is not installed here"
  deb="$(ls "$DEB_CACHE/${p}_"*.deb 2>/dev/null | head -1 || true)"
  want="${p}_$(echo "$v" | sed 's/^[0-9]*://')_"
  if [ -z "$deb" ] || [[ "$(basename "$deb")" != "$want"* ]]; then
    rm -f "$DEB_CACHE/${p}_"*.deb
    if (cd "$DEB_CACHE" && apt-get download -q "$p=$v" >/dev/null 2>&1); then
      deb="$(ls "$DEB_CACHE/${p}_"*.deb | head -1)"
    else
      deb=""
    fi
  fi
  if [ -n "$deb" ]; then
    dpkg -x "$deb" "$BUNDLE/ompi"
  else
    # No registry: the installed package's own files are the same bytes.
    log "apt-get download $p=$v failed; copying the installed files (dpkg -L $p)"
    dpkg -L "$p" | while IFS= read -r path; do
      [ -f "$path" ] || [ -L "$path" ] || continue
      mkdir -p "$BUNDLE/ompi$(dirname "$path")"
      cp -a "$path" "$BUNDLE/ompi$path"
    done
  fi
done
OMPI_USR="$BUNDLE/ompi/usr"
OMPI_LIBDIR="$OMPI_USR/lib/$MA"
PLUGIN_DIR="$OMPI_LIBDIR/openmpi/lib/openmpi3"
PMIX_DIR="$OMPI_LIBDIR/pmix2"
[ -e "$OMPI_USR/bin/orterun" ] || die "orterun missing from the unpacked Open MPI"
[ -d "$PLUGIN_DIR" ] && [ -d "$PMIX_DIR/lib" ] || die "Open MPI plug-in or PMIx folder missing"
rm -rf "$OMPI_USR/share/doc" "$OMPI_USR/share/man" "$OMPI_USR/share/lintian" "$OMPI_USR/bin/mpijavac"* \
       "$OMPI_USR/bin/osh"* "$OMPI_USR/bin/shmem"* "$OMPI_USR/bin/oshmem_info"
# The alternatives system makes /usr/bin/mpirun here; the bundle names it directly.
ln -sf orterun "$OMPI_USR/bin/mpirun"
ln -sf orterun "$OMPI_USR/bin/mpiexec"
# Parts no moe-ep run uses (Fortran, Java, OpenSHMEM, tracing) and fabric plug-ins.
rm -f "$OMPI_LIBDIR"/libmpi_mpifh* "$OMPI_LIBDIR"/libmpi_usempi* "$OMPI_LIBDIR"/libmpi_java* \
      "$OMPI_LIBDIR"/libompitrace* "$OMPI_LIBDIR"/liboshmem* \
      "$OMPI_LIBDIR"/libmca_common_ucx* "$OMPI_LIBDIR"/libmca_common_ofi* "$OMPI_LIBDIR"/libmca_common_verbs*
rm -f "$OMPI_LIBDIR"/openmpi/lib/libmpi_mpifh* "$OMPI_LIBDIR"/openmpi/lib/libmpi_usempi*
# Dangling development links (libmpi.so -> ...) left by what was removed above or never unpacked.
find "$BUNDLE/ompi" -xtype l -delete
dropped=()
for plug in "$PLUGIN_DIR"/*.so "$PMIX_DIR"/lib/pmix/*.so; do
  [ -e "$plug" ] || continue
  if readelf -d "$plug" | grep NEEDED | grep -qE "$HEAVY_DEPS_RE"; then
    dropped+=("$(basename "$plug" .so)"); rm -f "$plug"
  fi
done
log "Open MPI $(dpkg-query -W -f='${Version}' libopenmpi3), PMIx $(dpkg-query -W -f='${Version}' libpmix2); dropped plug-ins: ${dropped[*]:-none}"

# ---------------------------------------------------------------------------------------------
# 4. Shared-library closure: every NEEDED library of every bundled ELF file that is not glibc and
#    not provided by the GPU machine (CUDA, cuBLAS, NCCL, driver) is copied into lib/.
BUNDLE_LDPATH="$BUNDLE/lib:$OMPI_LIBDIR:$OMPI_LIBDIR/openmpi/lib:$PMIX_DIR/lib"
elf_files() {
  find "$BUNDLE/bin" "$BUNDLE/lib" "$OMPI_USR/bin" "$OMPI_LIBDIR" -type f | while IFS= read -r f; do
    is_elf "$f" && echo "$f"
  done
}
: >"$BUILD_DIR/bundle_device_libs.txt"
for round in 1 2 3 4 5 6 7 8; do
  added=0
  while IFS= read -r f; do
    while read -r name arrow path _; do
      [ "$arrow" = "=>" ] || continue
      if [[ "$name" =~ $GLIBC_RE ]]; then continue; fi
      if [[ "$name" =~ $DEVICE_RE ]]; then echo "$name" >>"$BUILD_DIR/bundle_device_libs.txt"; continue; fi
      [ "$path" = "not" ] && die "$(basename "$f") needs $name, which is not found here either"
      case "$path" in "$BUNDLE"/*) continue ;; esac
      if [[ "$name" =~ $FALLBACK_RE ]]; then dest="$BUNDLE/lib-fallback/$name"; else dest="$BUNDLE/lib/$name"; fi
      [ -e "$dest" ] && continue
      cp -L "$path" "$dest"
      chmod u+w "$dest"
      added=$((added + 1))
    done < <(LD_LIBRARY_PATH="$BUNDLE_LDPATH" ldd "$f" 2>/dev/null)
  done < <(elf_files)
  [ "$added" -eq 0 ] && break
  log "closure round $round: copied $added libraries"
done
# libstdc++/libgcc_s dependencies are glibc only; check nothing else sneaked in.
for f in "$BUNDLE"/lib-fallback/*; do
  ldd "$f" | awk '$2=="=>"{print $1}' | while read -r n; do
    [[ "$n" =~ $GLIBC_RE || "$n" =~ $FALLBACK_RE ]] || die "$(basename "$f") needs $n"
  done
done
strip --strip-unneeded "$BUNDLE"/lib/*.so* "$BUNDLE"/lib-fallback/*.so* 2>/dev/null || true
sort -u -o "$BUILD_DIR/bundle_device_libs.txt" "$BUILD_DIR/bundle_device_libs.txt"
log "bundled libraries: $(ls "$BUNDLE/lib" | tr '\n' ' ')"
log "left to the GPU machine: $(tr '\n' ' ' <"$BUILD_DIR/bundle_device_libs.txt")"

# ---------------------------------------------------------------------------------------------
# 5. Data.
mkdir -p "$BUNDLE/data/fashion-mnist"
case "$BUNDLE_DATA" in
  all)  data_glob='*-ubyte.gz' ;;
  t10k) data_glob='t10k-*-ubyte.gz' ;;
  none) data_glob='' ;;
  *) die "BUNDLE_DATA must be all, t10k or none" ;;
esac
if [ -n "$data_glob" ]; then
  ls "$DATA_SRC"/$data_glob >/dev/null 2>&1 || die "no Fashion-MNIST files in $DATA_SRC (package dataset-fashion-mnist)"
  cp -L "$DATA_SRC"/$data_glob "$BUNDLE/data/fashion-mnist/"
fi

# ---------------------------------------------------------------------------------------------
# 6. env.sh, BUILD_INFO.
max_ver() {  # max_ver PREFIX FILES...: highest symbol version PREFIX_x.y the files need
  local p="$1"; shift
  for f in "$@"; do objdump -T "$f" 2>/dev/null | grep -o "(${p}_[0-9.]*)" || true; done \
    | tr -d '()' | sed "s/^${p}_//" | sort -V | tail -1
}
mapfile -t ALL_ELF < <(elf_files)
NEED_GLIBC="$(max_ver GLIBC "${ALL_ELF[@]}")"
NEED_GLIBCXX="$(max_ver GLIBCXX "${ALL_ELF[@]}")"
NEED_CXXABI="$(max_ver CXXABI "${ALL_ELF[@]}")"
{
  echo "git_commit=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "git_dirty=$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -qv '^??' && echo yes || echo no)"
  echo "built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "build_host_glibc=$(getconf GNU_LIBC_VERSION | awk '{print $2}')"
  echo "nvcc=$(/usr/local/cuda/bin/nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
  echo "cuda_architectures=90"
  echo "nccl_header=$(sed -n 's/^#define NCCL_\(MAJOR\|MINOR\|PATCH\) *\([0-9]*\).*/\2/p' /usr/local/cuda/include/nccl.h 2>/dev/null | paste -sd.)"
  echo "need_glibc=$NEED_GLIBC"
  echo "need_glibcxx=$NEED_GLIBCXX"
  echo "need_cxxabi=$NEED_CXXABI"
  echo "device_libs=$(tr '\n' ' ' <"$BUILD_DIR/bundle_device_libs.txt")"
  echo "openmpi=$(dpkg-query -W -f='${Version}' libopenmpi3)"
  echo "data=$BUNDLE_DATA"
} >"$BUNDLE/BUILD_INFO"
cat >"$BUNDLE/env.sh" <<'EOF'
# Source this (bash): the environment for running moe-ep from this bundle. Relocatable: paths are
# taken from where this file lies. CUDA/cuBLAS/NCCL come from the machine (tests/gpu/verify.sh
# adds their folder to LD_LIBRARY_PATH when the loader does not find them by itself).
MOE_BUNDLE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export MOE_BUNDLE
_ma=x86_64-linux-gnu
export OPAL_PREFIX="$MOE_BUNDLE/ompi/usr"
export PMIX_PREFIX="$MOE_BUNDLE/ompi/usr/lib/$_ma/pmix2"
# Debian's PMIx has absolute data and plug-in folders compiled in; its "env" install-dirs
# component takes them from these variables instead.
export PMIX_INSTALL_PREFIX="$PMIX_PREFIX" PMIX_EXEC_PREFIX="$PMIX_PREFIX"
export PMIX_LIBDIR="$PMIX_PREFIX/lib" PMIX_PKGLIBDIR="$PMIX_PREFIX/lib/pmix"
export PMIX_DATAROOTDIR="$PMIX_PREFIX/share" PMIX_DATADIR="$PMIX_PREFIX/share"
export PMIX_PKGDATADIR="$PMIX_PREFIX/share/pmix" PMIX_SYSCONFDIR="$PMIX_PREFIX/share"
export PMIX_MCA_mca_base_component_path="$PMIX_PREFIX/lib/pmix"
export MOE_BUNDLE_LD_LIBRARY_PATH="$MOE_BUNDLE/lib:$OPAL_PREFIX/lib/$_ma:$OPAL_PREFIX/lib/$_ma/openmpi/lib:$PMIX_PREFIX/lib"
export LD_LIBRARY_PATH="$MOE_BUNDLE_LD_LIBRARY_PATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$OPAL_PREFIX/bin:$MOE_BUNDLE/bin:$PATH"
export MOE_FASHION_MNIST_DIR="$MOE_BUNDLE/data/fashion-mnist"
# Open MPI on one machine, as root, more ranks than cores allowed; no ssh needed (plm isolated);
# shared memory without CMA (which VMs and containers often refuse).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_plm=isolated
export OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader,tcp OMPI_MCA_btl_tcp_if_include=lo
export OMPI_MCA_oob_tcp_if_include=lo
export OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMPI_MCA_mca_base_component_show_load_errors=0
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
MOE_MPIRUN_FLAGS=(--oversubscribe --bind-to none)
unset _ma
EOF

# ---------------------------------------------------------------------------------------------
# 7. The carried tarball.
mkdir -p "$CARRY_DIR"
rm -f "$TARBALL"
log "compressing into $TARBALL"
tar -C "$BUNDLE" -cf - . | xz -6 -T"$(nproc)" >"$TARBALL"
unpacked_mib=$(du -sm "$BUNDLE" | awk '{print $1}')
carried_bytes=$(stat -c %s "$TARBALL")
carried_mib=$(( (carried_bytes + 1048575) / 1048576 ))
tree_kib=$(git -C "$ROOT" ls-files -z | xargs -0 du -ck 2>/dev/null | tail -1 | awk '{print $1}')

# ---------------------------------------------------------------------------------------------
# 8. Self-containment check, here.
#  a) ldd audit: every library every bundled ELF file needs resolves inside the bundle, except
#     glibc and the CUDA/cuBLAS/NCCL family.
#  b) a bare root: a chroot holding only glibc, bash, coreutils-like tools and the CUDA toolkit
#     folder (as the GPU machine has one) -- no Open MPI, PMIx, hwloc, libevent, OpenBLAS,
#     protobuf, gflags, glog, libstdc++ -- in which tests/gpu/verify.sh unpacks the tarball and
#     runs every step it can without a GPU (MOE_VERIFY_NO_GPU_OK=1: GPU tests report SKIPPED).
check_bundle() {
  local bad=0 f name arrow path
  while IFS= read -r f; do
    while read -r name arrow path _; do
      [ "$arrow" = "=>" ] || continue
      [[ "$name" =~ $GLIBC_RE || "$name" =~ $DEVICE_RE ]] && continue
      case "$path" in
        "$BUNDLE"/*) ;;
        *) echo "  ${f#$BUNDLE/} -> $name => $path (outside the bundle)"; bad=1 ;;
      esac
    done < <(LD_LIBRARY_PATH="$BUNDLE_LDPATH:$BUNDLE/lib-fallback" ldd "$f" 2>/dev/null)
  done < <(elf_files)
  [ "$bad" = 0 ] || { log "ldd audit FAILED"; return 1; }
  log "ldd audit: all $(elf_files | wc -l) ELF files resolve inside the bundle (glibc and CUDA/cuBLAS/NCCL aside)"

  command -v unshare >/dev/null || { log "unshare missing: chroot check skipped"; return 0; }
  local R="$BUILD_DIR/bare_root" OUTD="$BUILD_DIR/bare_root_out" cuda_real t dep p rc
  rm -rf "$R" "$OUTD"
  mkdir -p "$R"/{usr/bin,usr/sbin,lib64,tmp,proc,sys,dev,repo,out,etc,root} "$R/usr/lib/$MA" "$OUTD"
  ln -s usr/bin "$R/bin"; ln -s usr/sbin "$R/sbin"; ln -s usr/lib "$R/lib"
  cp -L /lib64/ld-linux-x86-64.so.2 "$R/lib64/"
  for t in bash env timeout grep sed awk head tail cat ls mkdir rm cp mv date tee wc sort uniq tr \
           cut basename dirname readlink stat od xz tar find sleep nproc getconf ldd id uname \
           hostname mktemp du paste chmod ln true false printf seq kill ldconfig; do
    p="$(command -v "$t" || true)"
    [ -n "$p" ] || continue
    p="$(readlink -f "$p")"
    cp "$p" "$R/usr/bin/$t"
    is_elf "$p" || continue
    { ldd "$p" || true; } | awk '$2=="=>" && $3 ~ /^\// {print $3}' | while read -r dep; do
      cp -nL "$dep" "$R/usr/lib/$MA/"
    done
  done
  ln -sf bash "$R/usr/bin/sh"
  for g in libc.so.6 libm.so.6 libmvec.so.1 libpthread.so.0 libdl.so.2 librt.so.1 libresolv.so.2 \
           libutil.so.1 libnss_files.so.2 libnss_dns.so.2; do
    [ -e "/lib/$MA/$g" ] && cp -nL "/lib/$MA/$g" "$R/usr/lib/$MA/"
  done
  # The bare root must not hold what the bundle is meant to bring.
  for t in libstdc++.so.6 libgcc_s.so.1 libmpi.so.40 libopen-pal.so.40 libpmix.so.2 libhwloc.so.15 \
           libevent_core-2.1.so.7 libopenblas.so.0 libprotobuf.so.32 libgflags.so.2.2 libglog.so.1; do
    [ -e "$R/usr/lib/$MA/$t" ] && { log "bare root unexpectedly holds $t (a tool needs it)"; rm -f "$R/usr/lib/$MA/$t"; }
  done
  printf 'root:x:0:0:root:/root:/bin/bash\n' >"$R/etc/passwd"
  printf 'root:x:0:\n' >"$R/etc/group"
  printf '127.0.0.1 localhost %s\n' "$(hostname)" >"$R/etc/hosts"
  cuda_real="$(readlink -f /usr/local/cuda)"
  mkdir -p "$R$cuda_real"
  ln -s "$(basename "$cuda_real")" "$R/usr/local/cuda"
  log "bare-root check: verify.sh in a chroot without the system's Open MPI and libraries"
  unshare -m --propagation private bash -c '
    set -e
    R="$1"; ROOT="$2"; OUTD="$3"; CUDA="$4"
    mount -t proc proc "$R/proc"
    mount --rbind /sys "$R/sys"
    mount --rbind /dev "$R/dev"
    mount -t tmpfs tmpfs "$R/tmp"
    mount --bind "$CUDA" "$R$CUDA"; mount -o remount,bind,ro "$R$CUDA"
    mount --bind "$ROOT" "$R/repo"; mount -o remount,bind,ro "$R/repo"
    mount --bind "$OUTD" "$R/out"
    exec chroot "$R" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root OUT=/out \
      MOE_VERIFY_NO_GPU_OK=1 MOE_VERIFY_BUDGET_S="${MOE_CHECK_BUDGET_S:-900}" \
      MOE_VERIFY_STEP_TIMEOUT=400 bash /repo/tests/gpu/verify.sh' _ "$R" "$ROOT" "$OUTD" "$cuda_real" \
    && rc=0 || rc=$?
  rm -rf "$R"
  log "bare-root verify.sh exit code $rc; report: $OUTD/gpu_report.md"
  return $rc
}
if [ "$DO_CHECK" = 1 ]; then
  check_bundle || die "$TARBALL was written, but the self-containment check failed (see above and $BUILD_DIR/bare_root_out/gpu_report.md)"
fi

log "bundle: $unpacked_mib MiB unpacked ($BUNDLE)"
log "  bin $(du -sm "$BUNDLE/bin" | cut -f1) MiB, lib $(du -sm "$BUNDLE/lib" | cut -f1) MiB, lib-fallback $(du -sm "$BUNDLE/lib-fallback" | cut -f1) MiB, ompi $(du -sm "$BUNDLE/ompi" | cut -f1) MiB, data $(du -sm "$BUNDLE/data" | cut -f1) MiB"
log "carried: $TARBALL = $carried_mib MiB ($carried_bytes bytes); tracked tree ${tree_kib} KiB; device limit 64 MiB in all"
if [ "$carried_mib" -gt "$CARRY_LIMIT_MIB" ]; then
  die "carried tarball is $carried_mib MiB, over $CARRY_LIMIT_MIB MiB: try BUNDLE_DATA=t10k"
fi
log "done. On the GPU machine, from a copy of this checkout with build-gpu-carry/ beside it: bash tests/gpu/verify.sh (see tests/gpu/README.md)"
