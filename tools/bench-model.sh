#!/usr/bin/env bash
# Reruns the issue-5/22 speed comparison: one conv3d layer, the R3D-18 training step
# (two clip sizes) and the MC3-18 step, vssl against PyTorch CPU in the same invocation (repeats
# interleaved, medians), with peak RSS from /usr/bin/time -v.
#
#   tools/bench-model.sh [PYTHON_WITH_TORCH] [REPS]
#
# PYTHON_WITH_TORCH defaults to $VSSL_TORCH_PYTHON, then /tmp/torchenv/bin/python
# (python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch torchvision).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-${VSSL_TORCH_PYTHON:-/tmp/torchenv/bin/python}}
REPS=${2:-3}
cargo build --release --quiet
BIN=target/release/vssl
run() {
    echo "== $* (load: $(uptime | sed 's/.*load average: //'))"
    /usr/bin/time -v "$BIN" --device cpu bench "$@" --reps "$REPS" --torch "$PY" 2>/tmp/bench-time.$$
    grep -E "Maximum resident" /tmp/bench-time.$$ | sed 's/^\s*/   (both processes) /'
    rm -f /tmp/bench-time.$$
}
run conv3d --batch 8 --in 64 --out 64 --frames 16 --size 56 --kernel 3 --pad 1
run model --arch r3d_18 --batch 8 --frames 8 --size 64
run model --arch r3d_18 --batch 2 --frames 16 --size 112
run model --arch mc3_18 --batch 2 --frames 16 --size 112
