#!/usr/bin/env bash
# Clip-only decoding against the full-decode loader (issue 21, acceptance line 1) and
# loader scaling over workers (line 2), on generated UCF101-like and Kinetics-like files:
#   ucf    8 x 320x240 MPEG-4 part 2 (XviD) AVI, 180 frames, ffmpeg's defaults (GOP 12)
#   ucfb   the same with 2 B-frames (AVI without pts: decoded from the first packet)
#   kin    8 x 640x360 H.264 MP4, 300 frames, x264 defaults (keyint 250: about 1 key frame)
#   kin60  the same re-encoded with a 2 s GOP (-g 60)
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
enc() { ffmpeg -nostdin -v error -y "$@"; }
for i in 0 1 2 3 4 5 6 7; do
  src="testsrc2=size=320x240:rate=25,noise=alls=6:allf=t,hue=h=$((i * 40))"
  enc -f lavfi -i "$src" -frames:v 180 -c:v mpeg4 -vtag xvid -q:v 4 "$DIR/ucf_$i.avi"
  enc -f lavfi -i "$src" -frames:v 180 -c:v mpeg4 -vtag xvid -q:v 4 -bf 2 "$DIR/ucfb_$i.avi"
  enc -f lavfi -i "mandelbrot=size=640x360:rate=30:start_scale=$((i + 3)),noise=alls=4:allf=t" \
    -frames:v 300 -c:v libx264 -preset veryfast -pix_fmt yuv420p "$DIR/kin_$i.mp4"
  enc -i "$DIR/kin_$i.mp4" -c:v libx264 -preset veryfast -g 60 -pix_fmt yuv420p "$DIR/kin60_$i.mp4"
done
for set in ucf ucfb kin kin60; do
  ls "$DIR"/"${set}"_*.* | sed 's/$/,0/' > "$DIR/$set.csv"
  echo "== $set"
  "$VSSL" bench data experiments/geometric_r3d18_16x112_ucf101.toml \
    --set 'data.kind="csv"' --set "data.list=\"$DIR/$set.csv\"" --set train.batch_size=8 \
    --repeat "$REPEAT" --steps "$STEPS" | grep -v '^{'
done
