#!/usr/bin/env bash
# Builds a `--features cuda` release binary of fleet on a machine with no GPU
# and no system CUDA, from NVIDIA's CUDA 13.0 wheels on PyPI.
#
#   scripts/build-cuda.sh            # binary in target/cuda/release/fleet
#
# What it does, all under target/ (ignored by git), reusing what an earlier run
# left there:
#   1. a Python venv with the pinned CUDA 13.0 wheels (nvcc, runtime, cuBLAS,
#      cuRAND, NVRTC) in target/cuda-toolchain/venv;
#   2. a CUDA_HOME in target/cuda-toolchain/cuda with bin/, include/, nvvm/ and
#      lib/ (plain .so symlinks into the wheels), the layout cudarc links from;
#   3. a link-time stub libcuda.so (soname libcuda.so.1) in
#      target/cuda-toolchain/cuda/lib/stubs, generated from the cu* driver
#      functions cudarc declares: no wheel ships the driver library. The stub
#      only satisfies the linker; the binary loads the real driver's
#      libcuda.so.1 at run time. Never put the stub on a library path;
#   4. `cargo build --release --locked --features cuda` into target/cuda, so the
#      CPU build in target/release is untouched.
#
# Environment:
#   CUDA_COMPUTE_CAP   GPU architecture the kernels are compiled for
#                      (default 90: sm_90a, H100/H200)
#   FLEET_CUDA_TARGET_DIR   cargo target folder (default target/cuda)
#   PYTHON             interpreter for the venv (default python3)
#
# nvcc stays at 13.0: newer nvcc writes PTX that CUDA 13.0 drivers (580)
# reject, and cudarc does not know newer versions. The heavy steps run under
# `nice -n 19`; a clean build takes 12-25 minutes on two cores, most of it nvcc.
set -euo pipefail

die() {
    echo "build-cuda: error: $*" >&2
    exit 1
}
say() {
    echo "build-cuda: $*" >&2
}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

toolchain="$root/target/cuda-toolchain"
venv="$toolchain/venv"
cuda_home="$toolchain/cuda"
target_dir=${FLEET_CUDA_TARGET_DIR:-$root/target/cuda}
compute_cap=${CUDA_COMPUTE_CAP:-90}
python=${PYTHON:-python3}

# The CUDA 13.0 wheels that carry nvcc and the libraries candle links (the
# -cu12 nvcc wheels have no nvcc binary in them).
wheels=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-nvrtc==13.0.88
    nvidia-cuda-cccl==13.0.85
    nvidia-cublas==13.0.2.14
    nvidia-curand==10.4.0.35
)

for tool in "$python" cargo cc readelf objdump ldd; do
    command -v "$tool" >/dev/null || die "'$tool' not found on PATH"
done
[[ $(uname -s) == Linux && $(uname -m) == x86_64 ]] ||
    die "the CUDA wheels used here are for x86_64 Linux; this is $(uname -s) $(uname -m)"
[[ $compute_cap =~ ^[0-9]+[af]?$ ]] ||
    die "CUDA_COMPUTE_CAP='$compute_cap' is not a compute capability such as 90 or 80"

start=$SECONDS

# 1. The venv with the wheels. A stamp file records the pins it was made with,
# so a re-run skips pip unless the list changed.
stamp="$venv/.fleet-cuda-wheels"
if [[ ! -x $venv/bin/python ]]; then
    say "creating the venv $venv"
    mkdir -p "$toolchain"
    "$python" -m venv "$venv" ||
        die "'$python -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)"
fi
if [[ ! -f $stamp || $(cat "$stamp") != "${wheels[*]}" ]]; then
    say "installing the CUDA 13.0 wheels (about 1.2 GB unpacked)"
    nice -n 19 "$venv/bin/pip" install --no-input --disable-pip-version-check "${wheels[@]}" ||
        die "pip could not install the CUDA wheels (is PyPI reachable?)"
    echo "${wheels[*]}" >"$stamp"
else
    say "reusing the CUDA wheels in $venv"
fi

cu13=$("$venv/bin/python" -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13"))') ||
    die "the venv has no 'nvidia' package; remove $venv and run again"
for sub in bin/nvcc nvvm/bin/cicc include/cuda.h lib/libcudart.so.13 lib/libcublas.so.13 \
    lib/libcublasLt.so.13 lib/libcurand.so.10 lib/libnvrtc.so.13; do
    [[ -e $cu13/$sub ]] || die "$cu13/$sub is missing: the wheels are incomplete; remove $venv and run again"
done

# 2. CUDA_HOME. bin/, include/ and nvvm/ point at the wheels' folders (nvcc
# finds cicc and its headers relative to itself); lib/ holds both names of
# each library, libX.so for `-lX` and libX.so.N for the linker to follow the
# libraries' own dependencies (libcublas.so.13 needs libcublasLt.so.13).
mkdir -p "$cuda_home/lib/stubs"
for sub in bin include nvvm; do
    ln -sfn "$cu13/$sub" "$cuda_home/$sub"
done
ln -sfn lib "$cuda_home/lib64"
for lib in "$cu13"/lib/lib*.so.*; do
    name=$(basename "$lib")
    [[ $name == *.alt.* ]] && continue
    ln -sfn "$lib" "$cuda_home/lib/$name"
    ln -sfn "$lib" "$cuda_home/lib/${name%%.so.*}.so"
done

nvcc="$cuda_home/bin/nvcc"
nvcc_release=$("$nvcc" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\),.*/\1/p') ||
    die "$nvcc does not run"
[[ $nvcc_release == 13.0 ]] || die "nvcc is release '$nvcc_release', expected 13.0"

# 3. The stub libcuda.so, from the driver functions of the cudarc version in
# Cargo.lock. Rebuilt only when the symbol list changes.
nice -n 19 cargo fetch --locked >/dev/null || die "cargo fetch --locked failed"
cudarc_version=$(awk '/^name = "cudarc"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
[[ -n $cudarc_version ]] || die "Cargo.lock has no cudarc package; is candle's cuda feature still wired up?"
cudarc_src=""
for dir in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$cudarc_version"; do
    [[ -f $dir/src/driver/sys/mod.rs ]] && cudarc_src=$dir
done
[[ -n $cudarc_src ]] || die "cudarc $cudarc_version's source is not in the cargo registry after 'cargo fetch'"

stub_dir="$cuda_home/lib/stubs"
symbols=$({ grep -oE '^ +fn cu[A-Za-z0-9_]+\(' "$cudarc_src/src/driver/sys/mod.rs" || true; } |
    sed -E 's/^ +fn ([A-Za-z0-9_]+)\(/\1/' | sort -u)
[[ $(wc -l <<<"$symbols") -gt 100 ]] ||
    die "found too few cu* functions in $cudarc_src/src/driver/sys/mod.rs; its layout changed"
stub_c="$stub_dir/libcuda-stub.c"
{
    echo "/* Link-time stand-in for the NVIDIA driver's libcuda.so.1, generated by"
    echo "   scripts/build-cuda.sh from cudarc $cudarc_version's driver bindings."
    echo "   Never load it: the real driver provides these functions at run time. */"
    while read -r sym; do
        echo "int $sym(void) { return 999; /* CUDA_ERROR_UNKNOWN */ }"
    done <<<"$symbols"
} >"$stub_c.new"
if [[ ! -f $stub_dir/libcuda.so ]] || ! cmp -s "$stub_c.new" "$stub_c"; then
    mv "$stub_c.new" "$stub_c"
    say "generating the link-time stub libcuda.so ($(wc -l <<<"$symbols") functions)"
    cc -shared -fPIC -nostdlib -Wl,-soname,libcuda.so.1 -o "$stub_dir/libcuda.so" "$stub_c" ||
        die "compiling the stub libcuda.so failed"
else
    rm -f "$stub_c.new"
fi

# 4. The build. cudarc reads the version from `nvcc --version` on PATH and
# links from CUDA_HOME/CUDA_ROOT; candle-kernels' nvcc needs CUDA_COMPUTE_CAP
# where there is no nvidia-smi. Other CUDA path variables are cleared so a
# system CUDA cannot mix in.
say "building fleet with --features cuda for compute capability $compute_cap into $target_dir"
build_start=$SECONDS
env -u CUDA_PATH -u CUDA_TOOLKIT_ROOT_DIR -u CUDNN_LIB -u CUDARC_CUDA_VERSION \
    CUDA_HOME="$cuda_home" CUDA_ROOT="$cuda_home" NVCC="$nvcc" \
    CUDA_COMPUTE_CAP="$compute_cap" CARGO_TARGET_DIR="$target_dir" \
    PATH="$cuda_home/bin:$PATH" \
    nice -n 19 cargo build --release --locked --features cuda ||
    die "cargo build --features cuda failed (see above)"

binary="$target_dir/release/fleet"
[[ -x $binary ]] || die "the build finished but $binary is missing"
cuda_libs=$(readelf -d "$binary" | sed -n 's/.*(NEEDED).*\[\(lib\(cu\|nvrtc\)[^]]*\)\]/\1/p' | tr '\n' ' ')
glibc=$(objdump -T "$binary" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1)

cat <<EOF

fleet with CUDA (compute capability $compute_cap): $binary
  $(du -h "$binary" | cut -f1), built in $((SECONDS - build_start)) s ($((SECONDS - start)) s in all)
  CUDA libraries it links: $cuda_libs(and ${glibc/_/ } or newer)

ldd, with the wheels' libraries on the path (libcuda.so.1 is not found here:
the NVIDIA driver provides it):
EOF
LD_LIBRARY_PATH="$cu13/lib" ldd "$binary" | sed 's/^\t/  /'
cat <<EOF

To run it on a GPU machine (NVIDIA driver for CUDA 13.0 or newer), put a
folder with those libraries on the library path, e.g. a PyTorch venv's
site-packages/nvidia/cu13/lib (or $cu13/lib), and ask for the GPU:

  LD_LIBRARY_PATH=/path/to/venv/lib/python3.X/site-packages/nvidia/cu13/lib \\
    $binary run --set learner.device=cuda

Never put $stub_dir on the library path: it is a link-time stub.
EOF
