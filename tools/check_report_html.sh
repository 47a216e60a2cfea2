#!/usr/bin/env bash
# Renders the index.html of a `vssl compare` report in headless Chromium and checks
# it makes no network request and logs no console error; leaves a screenshot.
#
#   bash tools/check_report_html.sh [REPORT_DIR] [SCREENSHOT]
#
# Without REPORT_DIR it trains two shortened quick starts (different seeds),
# evaluates them (linear, knn) and compares them into a temporary folder. Installs
# what it needs: Debian's chromium (apt-get) and playwright-core (npm, into
# $VSSL_PW_DIR, default /tmp/vssl-pw), which drives that chromium.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
report="${1:-}"
shot="${2:-/tmp/vssl-index.png}"
pw="${VSSL_PW_DIR:-/tmp/vssl-pw}"

command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }
if [ ! -d "$pw/node_modules/playwright-core" ]; then
  mkdir -p "$pw" && (cd "$pw" && npm init -y >/dev/null && npm install --silent playwright-core)
fi
if [ -z "$report" ]; then
  exe="$root/target/release/vssl"
  [ -x "$exe" ] || (cd "$root" && cargo build --release)
  tmp="$(mktemp -d)"
  for seed in 0 1; do
    run="$tmp/runs/quick-seed$seed"
    "$exe" --device cpu train "$root/experiments/quickstart.toml" --out "$run" \
      --set train.steps=60 --set train.log_every=5 --set train.seed=$seed
    "$exe" --device cpu eval "$run" --protocol linear,knn >/dev/null
  done
  report="$tmp/report"
  "$exe" compare "$tmp/runs" --out "$report" --group-by run
fi
cp "$root/tools/check_report_html.mjs" "$pw/"
node "$pw/check_report_html.mjs" "$report/index.html" "$shot"
