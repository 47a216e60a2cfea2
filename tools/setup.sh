#!/usr/bin/env bash
# Installs the system packages vssl needs on Debian/Ubuntu: ffmpeg's libraries and
# headers (video-rs), clang (bindgen for ffmpeg-sys), pkg-config, and the ffmpeg CLI
# (tests make their own videos with it), and a TrueType font for `vssl compare` plots.
# Safe to run again: it installs only what is missing.
set -euo pipefail
pkgs=(pkg-config clang libclang-dev ffmpeg libavcodec-dev libavformat-dev libavutil-dev
      libswscale-dev libswresample-dev libavfilter-dev libavdevice-dev python3-pip
      fonts-dejavu-core)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "setup: system packages ok" >&2
