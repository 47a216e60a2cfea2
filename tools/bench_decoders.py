#!/usr/bin/env python3
"""vssl's decoder against the decoders a PyTorch user would pick, on the same files.

Issue 21, acceptance line 3. Two workloads per run, every decoder held to one thread
on one core (this process and vssl's are pinned to CPU 0):
  clip  decode a clip of --frames frames at --stride from each file (start drawn
        with --seed, the same for every decoder), resized to shorter side --short-side,
        RGB uint8; the peers may seek, as their users would;
  full  decode every frame of each file, resized the same.
Peers: torchcodec (Resize transform inside the decoder), decord (width/height at
open), PyAV (seek by timestamp, except in AVI, then frame.reformat), OpenCV (CAP_PROP_POS_FRAMES, cv2.resize
INTER_LINEAR, cvtColor; OPENCV_FFMPEG_CAPTURE_OPTIONS=threads;1). A peer that is not
installed is an error, not a skip. Each repeat times every decoder once, in an order
rotated from repeat to repeat; figures are medians, ratios medians of per-repeat ratios.

Usage: tools/bench_decoders.py --vssl target/release/vssl [--repeat 3] FILE...
Install the peers into a throwaway venv first:
  python3 -m venv /tmp/peers && /tmp/peers/bin/pip install av opencv-python-headless \
      decord torch torchcodec numpy
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "threads;1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def resized(w, h, s):
    """The output size vssl uses: shorter side s, aspect kept, rounded."""
    if w <= h:
        return s, max(1, round(h * s / w))
    return max(1, round(w * s / h)), s


def probe(path):
    import av

    with av.open(path) as c:
        st = c.streams.video[0]
        n = sum(1 for p in c.demux(st) if p.size > 0)
        return n, st.codec_context.width, st.codec_context.height


def pyav(path, idx, w, h):
    import av

    out = []
    with av.open(path) as c:
        st = c.streams.video[0]
        st.thread_type = "SLICE"
        st.codec_context.thread_count = 1
        rate = st.average_rate or st.guessed_rate
        want = set(idx) if idx is not None else None
        start = min(idx) if idx is not None else 0
        # AVI frames carry no reliable timestamps (B-frames): decode from the start there.
        seekable = (idx is not None and start > 0 and st.time_base is not None and rate
                    and "avi" not in c.format.name)
        if seekable:
            t0 = st.start_time or 0
            c.seek(t0 + int(start / rate / st.time_base), stream=st, backward=True)
        k = 0
        for f in c.decode(st):
            if seekable:
                if f.pts is None:  # no timestamps: start again without seeking
                    return pyav_from_start(path, idx, w, h)
                k = round(float((f.pts - (st.start_time or 0)) * st.time_base * rate))
            if want is None or k in want:
                out.append(f.reformat(width=w, height=h, format="rgb24").to_ndarray())
            k += 1
            if want is not None and len(out) == len(want):
                break
    return out


def pyav_from_start(path, idx, w, h):
    import av

    out, want = [], set(idx)
    with av.open(path) as c:
        st = c.streams.video[0]
        st.codec_context.thread_count = 1
        for k, f in enumerate(c.decode(st)):
            if k in want:
                out.append(f.reformat(width=w, height=h, format="rgb24").to_ndarray())
                if len(out) == len(want):
                    break
    return out


def decord_(path, idx, w, h):
    import decord

    vr = decord.VideoReader(path, ctx=decord.cpu(0), width=w, height=h, num_threads=1)
    ids = idx if idx is not None else list(range(len(vr)))
    return list(vr.get_batch(ids).asnumpy())


def torchcodec_(path, idx, w, h):
    from torchcodec.decoders import VideoDecoder
    from torchcodec.transforms import Resize

    d = VideoDecoder(path, num_ffmpeg_threads=1, dimension_order="NHWC",
                     transforms=[Resize((h, w))])
    if idx is None:
        b = d.get_frames_in_range(0, d.metadata.num_frames)
    else:
        b = d.get_frames_at(idx)
    return list(b.data.numpy())


def opencv(path, idx, w, h):
    import cv2

    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    out = []
    if idx is None:
        while True:
            ok, f = cap.read()
            if not ok:
                break
            out.append(cv2.cvtColor(cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR),
                                    cv2.COLOR_BGR2RGB))
    else:
        want, start = set(idx), min(idx)
        cap.set(cv2.CAP_PROP_POS_FRAMES, start)
        for k in range(start, max(idx) + 1):
            if k in want:
                ok, f = cap.read()
                if not ok:
                    break
                out.append(cv2.cvtColor(cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR),
                                        cv2.COLOR_BGR2RGB))
            elif not cap.grab():
                break
    cap.release()
    return out


PEERS = {"torchcodec": torchcodec_, "decord": decord_, "pyav": pyav, "opencv": opencv}


class PeerFailed(Exception):
    pass


def time_peer(fn, plan, sizes):
    t = time.perf_counter()
    frames = 0
    for (path, idx), (w, h) in zip(plan, sizes):
        got = fn(path, idx, w, h)
        want = len(idx) if idx is not None else None
        if want is not None and len(got) != want:
            raise PeerFailed(f"{path}: {len(got)} frames, expected {want}")
        frames += len(got)
    return time.perf_counter() - t, frames


def time_vssl(binary, plan, short):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([{"path": p, "frames": i or []} for p, i in plan], f)
        name = f.name
    try:
        out = subprocess.run(["taskset", "-c", "0", binary, "bench", "decode", name,
                              "--short-side", str(short)],
                             check=True, capture_output=True, text=True,
                             env={**os.environ, "RAYON_NUM_THREADS": "1"})
    finally:
        os.unlink(name)
    j = json.loads(out.stdout.strip().splitlines()[-1])
    return j["seconds"], j["frames"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vssl", required=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--stride", type=int, default=4)
    ap.add_argument("--short-side", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workloads", default="clip,full")
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    os.sched_setaffinity(0, {0})
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    rng = random.Random(a.seed)
    span = (a.frames - 1) * a.stride + 1
    info = [probe(p) for p in a.files]
    sizes = [resized(w, h, a.short_side) for _, w, h in info]
    plans = {}
    for wl in a.workloads.split(","):
        if wl == "clip":
            plan = []
            for p, (n, _, _) in zip(a.files, info):
                if n < span:
                    raise SystemExit(f"{p}: {n} frames, a clip spans {span}")
                s = rng.randint(0, n - span)
                plan.append((p, [s + k * a.stride for k in range(a.frames)]))
        elif wl == "full":
            plan = [(p, None) for p in a.files]
        else:
            raise SystemExit(f"unknown workload {wl}")
        plans[wl] = plan
    names = ["vssl"] + list(PEERS)
    # One untimed call each first: library loading and first-use set-up do not count.
    for n, fn in PEERS.items():
        fn(a.files[0], [0], *sizes[0])
    time_vssl(a.vssl, [(a.files[0], [0])], a.short_side)
    for wl, plan in plans.items():
        secs = {n: [] for n in names}
        ratio = {n: [] for n in names}
        frames = {}
        failed = {}
        for r in range(a.repeat):
            order = names[r % len(names):] + names[:r % len(names)]
            got = {}
            for n in order:
                if n == "vssl":
                    got[n] = time_vssl(a.vssl, plan, a.short_side)
                elif n not in failed:
                    # A peer that fails on these files is reported as such, not timed.
                    try:
                        got[n] = time_peer(PEERS[n], plan, sizes)
                    except Exception as e:  # noqa: BLE001 - any peer failure
                        failed[n] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
            for n in got:
                secs[n].append(got[n][0])
                frames[n] = got[n][1]
                ratio[n].append(got[n][0] / got["vssl"][0])
        unit = "clips" if wl == "clip" else "frames"
        count = len(plan) if wl == "clip" else frames["vssl"]
        print(f"== {wl}: {len(plan)} files, {frames['vssl']} frames, short side {a.short_side}, "
              f"1 thread on 1 core, medians of {a.repeat}")
        for n in names:
            if n in failed:
                print(f"  {n:10s} failed: {failed[n]}")
                continue
            m = statistics.median(secs[n])
            line = f"  {n:10s} {count / m:9.1f} {unit}/s  ({m:.3f} s, {frames[n]} frames)"
            if n != "vssl":
                line += f"  vssl is {statistics.median(ratio[n]):.2f}x faster"
            print(line)
        fastest = min((n for n in PEERS if n not in failed),
                      key=lambda n: statistics.median(secs[n]))
        print(f"  fastest peer: {fastest}; vssl / {fastest} = "
              f"{statistics.median(ratio[fastest]):.2f}x")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
