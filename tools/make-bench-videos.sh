#!/usr/bin/env bash
# Writes the generated benchmark video sets into DIR (8 files each) and a DIR/SET.csv
# list per set, for tools/bench-clip-decode.sh and tools/bench-decoders.sh:
#   ucf    320x240 MPEG-4 part 2 (XviD) AVI, 180 frames, ffmpeg's defaults at -q:v 4
#          (GOP 12, no B-frames; about 1.1 MB, twice UCF101's average bitrate)
#   ucfb   the same with 2 B-frames (AVI without pts)
#   ucf5   as ucf at 550 kbit/s, UCF101's average (6.5 GB over 13,320 videos of ~7 s)
#   ucf5b  as ucf5 with 2 B-frames
#   kin    640x360 H.264 MP4, 300 frames, x264 defaults (keyint 250)
#   kin60  the same re-encoded with a 2 s GOP (-g 60)
# Usage: tools/make-bench-videos.sh DIR
set -euo pipefail
DIR=${1:?usage: make-bench-videos.sh DIR}
mkdir -p "$DIR"
enc() { ffmpeg -nostdin -v error -y "$@"; }
for i in 0 1 2 3 4 5 6 7; do
  src="testsrc2=size=320x240:rate=25,noise=alls=6:allf=t,hue=h=$((i * 40))"
  xvid=(-frames:v 180 -c:v mpeg4 -vtag xvid)
  enc -f lavfi -i "$src" "${xvid[@]}" -q:v 4 "$DIR/ucf_$i.avi"
  enc -f lavfi -i "$src" "${xvid[@]}" -q:v 4 -bf 2 "$DIR/ucfb_$i.avi"
  enc -f lavfi -i "$src" "${xvid[@]}" -b:v 550k "$DIR/ucf5_$i.avi"
  enc -f lavfi -i "$src" "${xvid[@]}" -b:v 550k -bf 2 "$DIR/ucf5b_$i.avi"
  enc -f lavfi -i "mandelbrot=size=640x360:rate=30:start_scale=$((i + 3)),noise=alls=4:allf=t" \
    -frames:v 300 -c:v libx264 -preset veryfast -pix_fmt yuv420p "$DIR/kin_$i.mp4"
  enc -i "$DIR/kin_$i.mp4" -c:v libx264 -preset veryfast -g 60 -pix_fmt yuv420p "$DIR/kin60_$i.mp4"
done
for set in ucf ucfb ucf5 ucf5b kin kin60; do
  ls "$DIR"/"${set}"_*.* | sed 's/$/,0/' > "$DIR/$set.csv"
done
