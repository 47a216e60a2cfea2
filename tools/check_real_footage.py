#!/usr/bin/env python3
"""Checks vssl's decoder on real recordings (issue 21, acceptance line 5).

For each file: the frame count vssl decodes must equal `ffprobe -count_frames`; its
frames (native size, RGB24, full resolution) must match PyAV's `rgb24` frames within
one level of mean absolute difference; and a clip decoded alone (clip-only decoding,
seeking where the file allows) must equal the same frames of vssl's full decode, bit
for bit. Prints one row per file and exits non-zero if any check fails.

Usage: tools/check_real_footage.py --vssl target/release/vssl FILE...
(tools/check-real-footage.sh fetches the recordings and a python with PyAV first.)
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import av
import numpy as np


def ffprobe_frames(path):
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
                          "-show_entries", "stream=nb_read_frames,codec_name,width,height",
                          "-of", "json", path], check=True, capture_output=True, text=True)
    s = json.loads(out.stdout)["streams"][0]
    return int(s["nb_read_frames"]), s["codec_name"], s["width"], s["height"]


def vssl_dump(binary, plan, out):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(plan, f)
        name = f.name
    try:
        subprocess.run([binary, "bench", "decode", name, "--short-side", "0", "--full-res",
                        "--dump", out], check=True, capture_output=True, text=True)
    finally:
        os.unlink(name)
    res = []
    for i in range(len(plan)):
        meta = json.load(open(os.path.join(out, f"{i}.json")))
        raw = np.fromfile(os.path.join(out, f"{i}.rgb"), dtype=np.uint8)
        res.append(raw.reshape(meta["frames"], meta["height"], meta["width"], 3))
    return res


def pyav_frames(path):
    with av.open(path) as c:
        st = c.streams.video[0]
        st.codec_context.thread_count = 1
        return [f.to_ndarray(format="rgb24") for f in c.decode(st)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vssl", required=True)
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    ok = True
    print(f"{'file':28s} {'codec':10s} {'size':>9s} {'ffprobe':>7s} {'vssl':>5s} {'pyav':>5s} "
          f"{'MAD mean':>8s} {'MAD max':>7s} {'clip':>10s}")
    with tempfile.TemporaryDirectory() as tmp:
        for path in a.files:
            n, codec, w, h = ffprobe_frames(path)
            full = vssl_dump(a.vssl, [{"path": path, "frames": []}], os.path.join(tmp, "f"))[0]
            ref = pyav_frames(path)
            m = min(len(ref), full.shape[0])
            mads = [np.abs(full[t].astype(np.int16) - ref[t].astype(np.int16)).mean()
                    for t in range(m) if ref[t].shape == full[t].shape]
            mad_mean = float(np.mean(mads)) if mads else float("nan")
            mad_max = float(np.max(mads)) if mads else float("nan")
            # A 16-frame clip at stride 4 starting 60% of the way in (or as late as fits).
            span = 61
            start = max(0, min(int(0.6 * full.shape[0]), full.shape[0] - span))
            idx = [min(start + 4 * k, full.shape[0] - 1) for k in range(16)]
            idx = sorted(set(idx))
            clip = vssl_dump(a.vssl, [{"path": path, "frames": idx}], os.path.join(tmp, "c"))[0]
            same = clip.shape[0] == len(idx) and all(
                np.array_equal(clip[k], full[i]) for k, i in enumerate(idx))
            row_ok = (full.shape[0] == n == len(ref) and len(mads) == m and mad_mean <= 1.0
                      and same)
            ok &= row_ok
            print(f"{os.path.basename(path):28s} {codec:10s} {w:4d}x{h:<4d} {n:7d} "
                  f"{full.shape[0]:5d} {len(ref):5d} {mad_mean:8.3f} {mad_max:7.3f} "
                  f"{'identical' if same else 'DIFFERENT':>10s}{'' if row_ok else '  FAIL'}")
    print("all checks pass" if ok else "some checks FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
