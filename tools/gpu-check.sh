#!/usr/bin/env bash
# The GPU check: one short script for a machine with an NVIDIA GPU, PyTorch and no
# Rust toolchain. Build the binary elsewhere (`tools/cuda-build.sh cuda,cudnn,nccl`,
# then strip and gzip it), bring it along, and run this; it prints every figure and
# writes them to $OUT/gpu-check.txt. With cuDNN in the build, step 2's `(device)`
# conv3d rows check cuDNN's passes and steps 3-5 run on them; a build without it
# runs the composed form there.
#
#   tools/gpu-check.sh [--dry] [--bin PATH] [--python PY] [--device DEV]
#
#   --dry      CPU and tiny sizes: checks the script itself end to end in about a
#              minute on any machine (what CI and a laptop can run)
#   --bin      the vssl binary (default target/release/vssl), or a gzip of it (.gz):
#              a stripped release CUDA build is about 74 MB, 22 MB gzipped, so it
#              travels to a machine with a 64 MiB carry limit compressed
#   --python   a Python with torch + torchvision, the peer (default python3);
#              `none` runs vssl alone and says so in the report
#   --device   cuda:N (default cuda:0; cpu with --dry)
#
# Steps, each timed and reported (a failing step is reported and the rest still run;
# the exit status is non-zero if any failed). About 5 minutes on one GPU:
#   1. the machine: nvidia-smi, torch's CUDA build, the libraries the binary loads;
#   2. `vssl bench ops`: every 3D op on the device against the CPU kernels, forward
#      and gradients, f32 and bf16, each within its stated tolerance;
#   3. one 64-channel 3x3x3 layer forward+backward, vssl against torch on the device;
#   4. the R3D-18 training step (forward, backward, SGD) at batch 16 x 3x16x112x112,
#      vssl against torch (cuDNN autotuned), repeats interleaved, medians;
#   5. 50 steps of experiments/quickstart.toml on the device and on the CPU: the
#      loss curves agree within 0.05 at every step (same data, same initialisation);
#   6. the linear probe of the device run's backbone against random init.
set -u
cd "$(dirname "$0")/.."
DRY=0 BIN=target/release/vssl PY=python3 DEV=
while [ $# -gt 0 ]; do
    case "$1" in
        --dry) DRY=1 ;;
        --bin) BIN=$2; shift ;;
        --python) PY=$2; shift ;;
        --device) DEV=$2; shift ;;
        *) echo "gpu-check: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$DEV" ]; then
    if [ $DRY = 1 ]; then DEV=cpu; else DEV=cuda:0; fi
fi
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
REPORT=$OUT/gpu-check.txt
: >"$REPORT"
say() { echo "$*" | tee -a "$REPORT"; }
if [ "${BIN%.gz}" != "$BIN" ] && [ -f "$BIN" ]; then
    gunzip -c "$BIN" >"$OUT/vssl" && chmod +x "$OUT/vssl" && BIN=$OUT/vssl
fi
if [ ! -x "$BIN" ]; then
    say "gpu-check: no vssl binary at $BIN (build one with tools/cuda-build.sh, or pass --bin)"
    exit 2
fi

# The CUDA libraries a pip-installed torch brings (cuBLAS, cuRAND, NVRTC) are what a
# machine without a toolkit has; the binary finds them through LD_LIBRARY_PATH.
TORCH=()
if [ "$PY" != none ]; then
    if ! "$PY" -c 'import torch, torchvision' 2>/dev/null; then
        say "gpu-check: $PY has no torch + torchvision (pass --python, or --python none to run vssl alone)"
        exit 2
    fi
    TORCH=(--torch "$PY")
    libs=$("$PY" - <<'EOF'
import glob, os, site
dirs = []
for base in site.getsitepackages() + [site.getusersitepackages()]:
    dirs += sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib")))
print(":".join(dirs))
EOF
)
    [ -n "$libs" ] && export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

if [ $DRY = 1 ]; then
    CONV=(--batch 1 --in 8 --out 8 --frames 4 --size 12 --kernel 3 --pad 1 --reps 1)
    MODEL=(--arch r3d_18 --batch 1 --frames 4 --size 32 --reps 1 --warmup 1)
    STEPS=4
else
    CONV=(--batch 8 --in 64 --out 64 --frames 16 --size 56 --kernel 3 --pad 1 --reps 5)
    MODEL=(--arch r3d_18 --batch 16 --frames 16 --size 112 --reps 5 --warmup 3)
    STEPS=50
fi

FAILED=()
step() {
    local name=$1; shift
    say ""
    say "== $name: $*"
    local t0=$SECONDS rc=0
    "$@" >"$OUT/$name.log" 2>&1 || rc=$?
    cat "$OUT/$name.log" >>"$REPORT"
    if [ $rc = 0 ]; then
        head -n 6 "$OUT/$name.log" | cut -c1-200
        say "-- $name: ok in $((SECONDS - t0)) s"
    else
        tail -n 40 "$OUT/$name.log"
        say "-- $name: FAILED (exit $rc) after $((SECONDS - t0)) s; full log $OUT/$name.log"
        FAILED+=("$name")
    fi
}

machine() {
    echo "date: $(date -u +%FT%TZ)  device: $DEV  dry: $DRY  binary: $BIN"
    if [ "$DEV" != cpu ]; then
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || return 1
    fi
    if [ "$PY" != none ]; then
        "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
    fi
    if command -v ldd >/dev/null; then
        local missing
        missing=$(ldd "$BIN" | grep 'not found' || true)
        if [ -n "$missing" ]; then echo "libraries not found: $missing"; return 1; fi
        ldd "$BIN" | grep -E 'libcu|libnvrtc|libcurand' || echo "(no CUDA libraries linked: a CPU build)"
    fi
}

quick_run() {
    local run=$OUT/quickstart cpu=$OUT/quickstart-cpu
    rm -rf "$run" "$cpu"
    local sets=(--set "train.steps=$STEPS" --set train.log_every=1 --set eval.linear_epochs=5)
    "$BIN" --device "$DEV" train experiments/quickstart.toml "${sets[@]}" --out "$run" || return 1
    "$BIN" --device cpu train experiments/quickstart.toml "${sets[@]}" --out "$cpu" || return 1
    python3 - "$run/metrics.jsonl" "$cpu/metrics.jsonl" <<'EOF' || return 1
import json, sys
dev, cpu = ([json.loads(l)["loss"] for l in open(p)] for p in sys.argv[1:3])
worst = max(abs(a - b) for a, b in zip(dev, cpu))
print(f"loss curves over {len(dev)} steps: device {dev[0]:.4f} -> {dev[-1]:.4f}, "
      f"cpu {cpu[0]:.4f} -> {cpu[-1]:.4f}, max |difference| {worst:.2e} (tolerance 0.05)")
sys.exit(0 if len(dev) == len(cpu) and worst <= 0.05 else 1)
EOF
    echo "pretrained:"
    "$BIN" --device "$DEV" eval "$run" --protocol linear || return 1
    echo "random init:"
    "$BIN" --device "$DEV" eval "$run" --protocol linear --random-init
}

step machine machine
step ops "$BIN" --device "$DEV" bench ops
step conv3d "$BIN" --device "$DEV" bench conv3d "${CONV[@]}" "${TORCH[@]}"
step model "$BIN" --device "$DEV" bench model "${MODEL[@]}" "${TORCH[@]}"
step quickstart quick_run

top1() { grep -o '"top1":[0-9.]*' | cut -d: -f2; }
say ""
say "== summary ($DEV)"
say "ops parity:        $(tail -n 1 "$OUT/ops.log" 2>/dev/null || echo 'no figure')"
say "conv3d 64ch layer: $(grep -h 'share of torch' "$OUT/conv3d.log" 2>/dev/null || echo 'no figure')"
say "R3D-18 step:       $(grep -h '^ratio' "$OUT/model.log" 2>/dev/null || echo 'no figure')"
say "                   $(grep -h '^vssl :\|^torch:' "$OUT/model.log" 2>/dev/null | tr '\n' ' ')"
if [ -f "$OUT/quickstart.log" ]; then
    say "quickstart:        $(grep -h '^loss curves' "$OUT/quickstart.log" || echo 'no figure')"
    read -r pre rnd <<<"$(top1 <"$OUT/quickstart.log" | tr '\n' ' ')"
    say "quickstart linear top-1: pretrained ${pre:-?} vs random init ${rnd:-?}"
fi
if [ ${#FAILED[@]} -gt 0 ]; then
    say "gpu-check: FAILED steps: ${FAILED[*]} (report $REPORT)"
    exit 1
fi
say "gpu-check: all steps passed (report $REPORT)"
