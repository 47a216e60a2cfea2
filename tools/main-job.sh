#!/usr/bin/env bash
# The main job: install what is needed, build, pretrain experiments/quickstart.toml
# on the built-in synthetic videos, and compare the pretrained backbone with the
# same architecture at random init (linear probe top-1 and retrieval recall@1).
# Usage: tools/main-job.sh [SEED ...]   (default: seed 0)
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
cargo build --release --quiet
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(0)
bin=target/release/vssl
summary=()
for seed in "${seeds[@]}"; do
  run="weights/quickstart-seed$seed"
  rm -rf "$run"
  start=$(date +%s)
  $bin train experiments/quickstart.toml --set "train.seed=$seed" --out "$run" >/dev/null
  pre=$($bin eval "$run" --protocol linear,knn | python3 -c 'import sys,json; d=[json.loads(l) for l in sys.stdin]; print(d[0]["metrics"]["top1"], d[1]["metrics"]["recall@1"])')
  rnd=$($bin eval "$run" --protocol linear,knn --random-init | python3 -c 'import sys,json; d=[json.loads(l) for l in sys.stdin]; print(d[0]["metrics"]["top1"], d[1]["metrics"]["recall@1"])')
  secs=$(( $(date +%s) - start ))
  summary+=("$seed $pre $rnd $secs")
done
echo
printf '%-6s %-22s %-22s %-22s %-22s %s\n' seed "pretrained top-1" "random-init top-1" "pretrained recall@1" "random-init recall@1" "seconds"
for line in "${summary[@]}"; do
  read -r seed pt pr rt rr secs <<<"$line"
  printf '%-6s %-22.4f %-22.4f %-22.4f %-22.4f %s\n' "$seed" "$pt" "$rt" "$pr" "$rr" "$secs"
done
