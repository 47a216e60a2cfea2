#!/usr/bin/env bash
# Builds vssl with candle's CUDA backend on a machine that has neither a GPU nor a
# system CUDA toolkit (issue 20, Build 1).
#
#   tools/cuda-build.sh [FEATURES] [EXTRA CARGO ARGS...]     (FEATURES default: cuda)
#
# FEATURES is one cargo feature list: cuda, cuda,cudnn, cuda,nccl, ...
#
# Steps:
# 1. Once per machine, it assembles CUDA 13.0 from NVIDIA's PyPI wheels into
#    $VSSL_CUDA_CACHE (default ~/.cache/vssl/cuda-13.0, about 1.3 GB):
#    - the compiler: nvcc, crt, nvvm;
#    - the libraries: runtime, nvrtc, cccl, cublas, curand.
#    The versions are pinned to 13.0.x, whose PTX the NVIDIA 580 driver (CUDA 13.0)
#    loads. With CUDA_COMPUTE_CAP=90 the kernels are compiled for sm_90 (H100/H200).
# 2. It adds the unversioned .so links the linker looks for.
# 3. It adds link-only stubs under lib/stubs, found through LIBRARY_PATH at link time
#    and never on LD_LIBRARY_PATH: libcuda.so (soname libcuda.so.1, the driver's),
#    libcudnn.so (libcudnn.so.9) and libnccl.so (libnccl.so.2), each exporting the
#    functions cudarc declares for it. candle 0.11 links cudarc with `dynamic-linking`,
#    so the binary needs the driver's libcuda.so.1, libcudart/libcublas/libcurand 13
#    and, with those features, cuDNN 9 and NCCL 2 when it starts: a PyTorch install
#    for CUDA 13 brings all of them (nvidia-cudnn-cu13, nvidia-nccl-cu13), and
#    tools/gpu-check.sh puts them on LD_LIBRARY_PATH.
# 4. It runs `cargo build --release --no-default-features --features FEATURES`, which
#    keeps ffmpeg out (GPU machines may lack Debian's ffmpeg libraries), into
#    $CARGO_TARGET_DIR (default target/cuda). VSSL_CUDA_PROFILE=ci-cuda builds the
#    unoptimised profile CI uses to check that the features compile and link.
#
# Measured on the 2-core CI-like VM: wheels 5 s, cold build 13m46s, rebuild after a
# change in vssl about 1.5 min.
set -euo pipefail
cd "$(dirname "$0")/.."
features=${1:-cuda}
[ $# -gt 0 ] && shift
cache=${VSSL_CUDA_CACHE:-$HOME/.cache/vssl/cuda-13.0}
root=$cache/nvidia/cu13
wheels=(
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-cccl==13.0.85
    nvidia-cublas==13.0.2.14 nvidia-curand==10.4.5.25
)

if [ ! -e "$cache/.complete" ]; then
    echo "cuda-build: assembling CUDA 13.0 from PyPI wheels into $cache" >&2
    mkdir -p "$cache/wheels"
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 \
        --python-version 3.11 -d "$cache/wheels" "${wheels[@]}"
    for w in "$cache"/wheels/*.whl; do
        python3 -m zipfile -e "$w" "$cache"
    done
    # zipfile drops the executable bits.
    chmod +x "$root"/bin/* "$root"/nvvm/bin/* 2>/dev/null || true
    chmod +x "$root"/bin/crt/* 2>/dev/null || true
    (
        cd "$root/lib"
        for f in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
            ln -sf "$f" "${f%%.so*}.so"
        done
    )
    touch "$cache/.complete"
fi

# The functions cudarc declares for a library, as empty exports of a stub with the
# real library's soname: enough for the linker, never loaded (the binary's NEEDED
# entry names the soname, which only the real library provides).
cudarc=
make_stub() { # NAME SONAME DECLS PREFIX
    local out=$root/lib/stubs/lib$1.so
    [ -e "$out" ] && return
    if [ -z "$cudarc" ]; then
        cudarc=$(cargo metadata --format-version 1 --features cuda 2>/dev/null | python3 -c '
import json, sys, os
m = json.load(sys.stdin)
print(next(os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"] == "cudarc"))')
    fi
    mkdir -p "$root/lib/stubs"
    grep -hoE "^\s+(pub )?fn $4[A-Za-z0-9_]*\(" "$cudarc/src/$3/sys/mod.rs" |
        sed -E 's/^\s+(pub )?fn //; s/\($//' | sort -u |
        sed 's/.*/void &(void) {}/' > "$root/lib/stubs/$1.c"
    cc -shared -fPIC -Wl,-soname,"$2" -o "$out" "$root/lib/stubs/$1.c"
    rm "$root/lib/stubs/$1.c"
}
make_stub cuda libcuda.so.1 driver 'cu[A-Z]'
case ",$features," in *,cudnn,*) make_stub cudnn libcudnn.so.9 cudnn cudnn ;; esac
case ",$features," in *,nccl,*) make_stub nccl libnccl.so.2 nccl nccl ;; esac

export CUDA_HOME=$root CUDA_PATH=$root
export PATH=$root/bin:$PATH
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export LIBRARY_PATH=$root/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda}
profile=${VSSL_CUDA_PROFILE:-release}
echo "cuda-build: cargo build --profile $profile --no-default-features --features $features (CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP, target $CARGO_TARGET_DIR)" >&2
cargo build --profile "$profile" --no-default-features --features "$features" "$@"
echo "cuda-build: $CARGO_TARGET_DIR/$profile/vssl (run it with $root/lib on LD_LIBRARY_PATH, or the same CUDA 13 libraries from elsewhere, and the NVIDIA driver installed; install it as vssl-cuda beside the CPU build's vssl, which then hands commands to it whenever a GPU answers)" >&2
