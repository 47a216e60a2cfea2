#!/usr/bin/env bash
# Behaviour fingerprint of a vssl build, for refactors that must not change numbers:
# 30 steps of each quick recipe (seed 0), then linear/knn/fine-tune eval of the first;
# prints sha256 of the model tensors, of the logged losses, of the eval json (paths
# stripped) and of each recipe.resolved.toml. Compare two builds line by line:
#   bash tools/parity.sh OLD/target/release/vssl /tmp/a > a.txt
#   bash tools/parity.sh target/release/vssl /tmp/b > b.txt; diff <(grep -v ^/ a.txt) <(grep -v ^/ b.txt)
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: tools/parity.sh VSSL_BINARY OUT_DIR" >&2; exit 2; }
bin=$(realpath "$1"); mkdir -p "$2"; out=$(realpath "$2"); rm -rf "${out:?}"/*
cd "$(dirname "$0")/.."
for r in quickstart speed_sort_quick temporal_contrast_quick temporal_discriminative_quick; do
  "$bin" train experiments/$r.toml --set train.steps=30 --set train.checkpoint_every=10 --set train.log_every=1 --out "$out/$r" 2> "$out/$r.log"
done
"$bin" eval "$out/quickstart" --protocol linear,knn,finetune --set eval.finetune_epochs=1 > "$out/ft.txt" 2> "$out/ft.log" || echo "finetune eval failed (see $out/ft.log)"
python3 tools/tensor_hash.py "$out"/quickstart "$out"/speed_sort_quick "$out"/temporal_contrast_quick "$out"/temporal_discriminative_quick
python3 - "$out" <<'PY'
import json, sys, hashlib
out = sys.argv[1]
def strip(j):
    if isinstance(j, dict): return {k: strip(v) for k, v in j.items() if k not in ("run", "weights", "dir", "seconds")}
    if isinstance(j, list): return [strip(v) for v in j]
    return j
for line in open(out + "/ft.txt"):
    j = strip(json.loads(line)); m = j["metrics"]
    print(f"eval {j['protocol']}: sha256={hashlib.sha256(json.dumps(j, sort_keys=True).encode()).hexdigest()[:16]} {m.get('top1', m.get('recall@1', m.get('best')))}")
for r in ["quickstart", "speed_sort_quick", "temporal_contrast_quick", "temporal_discriminative_quick"]:
    print(f"recipe.resolved.toml {r}: sha256={hashlib.sha256(open(f'{out}/{r}/recipe.resolved.toml','rb').read()).hexdigest()[:16]}")
PY
