#!/usr/bin/env bash
# Writes the seed inputs of the fuzz corpora (fuzz/corpus/<target>/seed-*): valid
# files of every format the fuzzed parsers read, so the fuzzers start past the first
# error. Run once from the repository root with a built binary; the fuzzers then add
# what they find (and `cargo fuzz cmin` keeps the corpus small).
#   bash tools/fuzz_seeds.sh [target/release/vssl]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/vssl}
C=fuzz/corpus
mkdir -p $C/{recipe,sweep,checkpoint,splits,cache_index,pth}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Recipes: every shipped experiment, resolved into one self-contained file (the
# harness's scratch folder has no registry to take bases from), plus small ones that
# use the harness's base.toml with --set overrides after NUL bytes.
for f in experiments/*.toml; do
  "$BIN" recipe "$f" > "$C/recipe/seed-$(basename "$f" .toml)"
done
printf 'base = "base.toml"\n[train]\nlr = 0.1\n\0train.steps=3\0data.size=12' > $C/recipe/seed-base-sets
printf 'base = ["base.toml"]\nname = "x"\n[method]\nkind = "speed_sort"\n\0backbone.norm="tgn"' > $C/recipe/seed-base-method

# Sweeps over the harness's base.toml, in each shape a sweep file takes.
printf 'base = "base.toml"\nseeds = [0, 1]\neval = ["linear", "knn"]\n[grid]\n"train.lr" = [0.1, 0.01]\n"data.size" = [12, 16]\n' > $C/sweep/seed-grid
printf 'name = "z"\nbase = "base.toml"\n[zip]\n"train.lr" = [0.1, 0.01]\n"train.seed" = [1, 2]\n[[runs]]\nname = "bn"\nset = { "backbone.norm" = "bn" }\n[[runs]]\nname = "scratch"\npretrain = false\n\0train.steps=1' > $C/sweep/seed-zip-runs
printf 'base = "base.toml"\n[[runs]]\nname = "a"\n[[runs]]\nname = "b"\nbase = "base.toml"\nset = { "train.lr" = 0.5 }\n' > $C/sweep/seed-runs

# Checkpoints: a model of the harness's tiny backbone (widths 2, 4 frames), a
# training checkpoint with its checksum, and the I/O fixture.
cat > "$tmp/tiny.toml" <<'R'
base = ["registry/methods/geometric.toml", "registry/datasets/synthetic.toml"]
[backbone]
arch = "r3d_small"
widths = [2, 2, 2, 2]
[data]
frames = 4
size = 16
[data.synthetic]
train_videos = 8
test_videos = 8
video_frames = 8
size = 20
[train]
steps = 1
batch_size = 2
checkpoint_every = 1
R
cp "$tmp/tiny.toml" .fuzz-seed.toml
"$BIN" train .fuzz-seed.toml --out "$tmp/run" --device cpu >/dev/null 2>&1 || { rm -f .fuzz-seed.toml; exit 1; }
rm -f .fuzz-seed.toml
cp "$tmp/run/model.safetensors" $C/checkpoint/seed-model
cp "$(ls "$tmp"/run/checkpoints/*.safetensors | tail -1)" $C/checkpoint/seed-checkpoint
cp tests/fixtures/tiny_io.safetensors $C/checkpoint/seed-tiny-io

# Split lists (first byte: 0 UCF101, 1 HMDB51, 2 CSV; files separated by NUL). The
# harness's video root holds A/a.avi, B/b.avi and c.avi.
printf '\0001 A\r\n2 B\r\n\0A/a.avi 1\r\nB/b.avi 2\r\n\0A/a.avi\r\nB/b.avi\r\n' > $C/splits/seed-ucf101
printf '\001a.avi 1\n\0b.avi 2\n' > $C/splits/seed-hmdb51
printf '\002path,label\nA/a.avi,0\nB/b.avi,1\n\0c.avi,1\n' > $C/splits/seed-csv
printf '\002A/a.avi\nc.avi\n\0' > $C/splits/seed-csv-unlabelled

# Frame-cache indexes against the harness's 4096-byte frame file (@CONFIG@ is
# replaced by the right config hash).
e() { printf '{"offset":%d,"frames":%d,"height":%d,"width":%d,"label":%s%s}' "$@"; }
printf '{"format":1,"config":"@CONFIG@","dataset":"fuzz","bytes":4096,"train":[%s,%s],"test":[%s]}' \
  "$(e 0 2 4 4 0 '')" "$(e 96 4 8 8 1 '')" "$(e 864 1 2 2 null ',"error":"cannot decode"')" > $C/cache_index/seed-index
printf '{"format":1,"config":"@CONFIG@","dataset":"fuzz","bytes":4096,"train":[%s,%s],"test":[%s]}' \
  "$(e 0 1 1 1 0 '')" "$(e 4000 1 4 8 1 '')" "$(e 3 2 2 2 1 '')" > $C/cache_index/seed-index-edges
printf '{"format":1,"config":"@CONFIG@","dataset":"fuzz","bytes":4096,"train":[%s,%s],"test":[%s]}' \
  "$(e 0 2 4 4 0 ',"source":{"path":"/nonexistent/a.avi","size":10,"mtime_s":1,"mtime_ns":2}')" "$(e 96 1 1 1 1 '')" "$(e 99 1 1 1 1 '')" > $C/cache_index/seed-index-source

# .pth: the importer's fixtures (plain, nested under `model`, TCLR layout, extra
# keys, a bad shape).
for f in tests/fixtures/*.pth; do cp "$f" "$C/pth/seed-$(basename "$f" .pth)"; done
ls $C/* | head -50
