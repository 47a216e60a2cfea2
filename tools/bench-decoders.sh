#!/usr/bin/env bash
# vssl's decoder against torchcodec, decord, PyAV and OpenCV (issue 21, acceptance
# line 3) on the generated sets of tools/make-bench-videos.sh, one thread on one core
# each, clip and full-decode workloads (see tools/bench_decoders.py).
# Usage: tools/bench-decoders.sh PYTHON [VSSL_BINARY] [REPEAT]
#   PYTHON: a python with av, opencv-python-headless, decord, torch and torchcodec:
#   python3 -m venv /tmp/peers && /tmp/peers/bin/pip install av opencv-python-headless decord torch torchcodec numpy
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:?usage: bench-decoders.sh PYTHON [VSSL] [REPEAT]}
VSSL=${2:-target/release/vssl}
REPEAT=${3:-3}
DIR=$(mktemp -d /tmp/vssl-decoders.XXXXXX)
trap 'rm -rf "$DIR"' EXIT
tools/make-bench-videos.sh "$DIR"
for set in ${SETS:-ucf ucf5 ucf5b kin kin60}; do
  echo "### $set"
  "$PY" tools/bench_decoders.py --vssl "$VSSL" --repeat "$REPEAT" "$DIR"/"${set}"_*.*
done
