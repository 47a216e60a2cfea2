#!/usr/bin/env bash
# Runs each cargo-fuzz target for a fixed time (default 600 s) on its committed
# corpus, then minimises the corpus (cargo fuzz cmin) so what is committed stays
# small. Prints, per target, libFuzzer's final executions, corpus size and crashes.
# Needs nightly Rust and cargo-fuzz (`cargo install cargo-fuzz`).
#   bash tools/fuzz.sh                 # every target, 10 minutes each
#   bash tools/fuzz.sh 60 recipe pth   # one minute each for two targets
# A crash, leak, timeout (30 s) or out-of-memory (2 GB) stops that target and is saved
# under fuzz/artifacts/<target>/; fix it and move it to fuzz/regressions/<target>/.
set -uo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(recipe sweep checkpoint splits cache_index pth)
status=0
for t in "${targets[@]}"; do
  log=$(mktemp)
  before=$(ls corpus/"$t" | wc -l)
  cargo +nightly fuzz run "$t" corpus/"$t" -- -max_total_time="$secs" -timeout=30 \
    -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$')
  crashes=$(ls artifacts/"$t" 2>/dev/null | wc -l)
  cargo +nightly fuzz cmin "$t" corpus/"$t" >/dev/null 2>&1 || true
  after=$(ls corpus/"$t" | wc -l)
  echo "$t: rc $rc, ${runs:-?} executions in ${secs} s, corpus $before -> $after files (after cmin), artifacts $crashes"
  if [ $rc -ne 0 ]; then
    status=1
    grep -E "panicked|ERROR|SUMMARY|Test unit written" "$log" | head -20
  fi
  rm -f "$log"
done
exit $status
