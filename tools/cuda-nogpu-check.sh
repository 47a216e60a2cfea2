#!/usr/bin/env bash
# Checks a CUDA build on a machine whose NVIDIA driver finds no GPU (issue 20,
# acceptance line 2), without a GPU or a driver: a stand-in libcuda.so.1 whose cuInit
# answers CUDA_ERROR_NO_DEVICE (100) and whose every other call fails, the toolkit
# libraries from tools/cuda-build.sh's cache, and the link-only cuDNN/NCCL stubs
# (loaded, never called). Then:
#   --device auto        trains one step on the CPU and says why (exit 0);
#   --device cuda:0      exits 2 with an error naming the flag;
#   train.device cuda:0  exits 2 with an error naming the recipe key.
#
#   tools/cuda-nogpu-check.sh BINARY
#
# tools/test.sh runs it after each CUDA build. (A machine with no driver at all cannot
# start a CUDA build: candle links libcuda.so.1, and the loader says so. The CPU
# `vssl` in front of `vssl-cuda` covers that case; see README, GPU.)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$1
root=${VSSL_CUDA_CACHE:-$HOME/.cache/vssl/cuda-13.0}/nvidia/cu13
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cudarc=$(cargo metadata --format-version 1 --features cuda 2>/dev/null | python3 -c '
import json, sys, os
m = json.load(sys.stdin)
print(next(os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"] == "cudarc"))')
mkdir -p "$work/lib"
{
    grep -hoE "^\s+(pub )?fn cu[A-Z][A-Za-z0-9_]*\(" "$cudarc/src/driver/sys/mod.rs" |
        sed -E 's/^\s+(pub )?fn //; s/\($//' | sort -u | grep -vx cuInit |
        sed 's/.*/int &(void) { return 999; }/'
    echo 'int cuInit(unsigned flags) { (void)flags; return 100; }'
} > "$work/cuda.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$work/lib/libcuda.so.1" "$work/cuda.c"
cp "$root/lib/stubs/libcudnn.so" "$work/lib/libcudnn.so.9" 2>/dev/null || true
cp "$root/lib/stubs/libnccl.so" "$work/lib/libnccl.so.2" 2>/dev/null || true
export LD_LIBRARY_PATH=$work/lib:$root/lib
export RUST_BACKTRACE=0

fail=0
expect() { # NAME WANT_RC WANT_TEXT ARGS...
    local name=$1 want=$2 text=$3
    shift 3
    local rc=0
    "$bin" "$@" --out "$work/run-$name" >"$work/out" 2>"$work/err" || rc=$?
    if [ "$rc" = "$want" ] && grep -qF -- "$text" "$work/err"; then
        echo "cuda-nogpu-check: $name: exit $rc, \"$(grep -F -- "$text" "$work/err" | head -1 | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-160)\""
    else
        echo "cuda-nogpu-check: $name: FAILED: exit $rc (want $want), stderr without \"$text\":" >&2
        sed 's/^/  /' "$work/err" >&2
        fail=1
    fi
}
recipe=experiments/quickstart.toml
expect auto 0 "running on the CPU" --device auto train "$recipe" --set train.steps=1
expect flag 2 "error: --device cuda:0" --device cuda:0 train "$recipe" --set train.steps=1
expect recipe 2 "error: train.device cuda:0" train "$recipe" --set train.steps=1 --set 'train.device="cuda:0"'
exit $fail
