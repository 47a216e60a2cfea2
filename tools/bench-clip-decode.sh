#!/usr/bin/env bash
# Clip-only decoding against the full-decode loader (issue 21, acceptance line 1) and
# loader scaling over workers (line 2), on the generated UCF101-like and Kinetics-like
# sets of tools/make-bench-videos.sh (SETS="ucf ucfb kin kin60" by default).
# Usage: tools/bench-clip-decode.sh [VSSL_BINARY] [REPEAT] [STEPS]
# Runs `vssl bench data` on the 3DRotNet paper recipe (16 frames, stride 1..5, batch 8)
# over each set and prints its report; figures are medians of REPEAT interleaved runs.
set -euo pipefail
cd "$(dirname "$0")/.."
VSSL=${1:-target/release/vssl}
REPEAT=${2:-3}
STEPS=${3:-6}
DIR=$(mktemp -d /tmp/vssl-clip-bench.XXXXXX)
trap 'rm -rf "$DIR"' EXIT
tools/make-bench-videos.sh "$DIR"
for set in ${SETS:-ucf ucfb kin kin60}; do
  echo "== $set"
  "$VSSL" bench data experiments/geometric_r3d18_16x112_ucf101.toml \
    --set 'data.kind="csv"' --set "data.list=\"$DIR/$set.csv\"" --set train.batch_size=8 \
    --repeat "$REPEAT" --steps "$STEPS" | grep -v '^{'
done
