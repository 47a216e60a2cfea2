#!/usr/bin/env python3
"""Kill-anywhere soak: SIGKILL vssl at random moments, resume, repeat until the job
finishes, then compare with an uninterrupted run. Bounded: a fixed number of trials,
each a short run; every trial must end bit-identical to the reference (model tensors
and every non-timing field of metrics.jsonl; for evaluations, the eval JSON too).

Three kinds of trial:
  train     `vssl train RECIPE` (quickstart unless --recipe), resumed with --resume
  finetune  `vssl eval RUN --protocol finetune` on a pretrained run, resumed with --resume
  sweep     `vssl sweep` of a 4-point grid (2 seeds x 2 learning rates, linear probe),
            rerun after each kill (the whole process group is killed, as a pre-empted
            Slurm job is)

Kill moments mix three kinds: a timer anywhere in the expected run time (start-up,
steps, evaluation, writes), VSSL_CRASH_AT_STEP=N (right after step N's update,
before its log line and checkpoint) and VSSL_CRASH_AT_WRITE=N (halfway through the
N-th checkpoint write). The last two need a binary built with `--features
crash-hook` (tools/test.sh builds one); without it they never fire and the timer
kills instead.

  cargo build --release --features crash-hook
  python3 tools/soak.py --train 20 --finetune 10 --sweep 5
  python3 tools/soak.py --train 2 --finetune 1 --sweep 1 --steps 12   # a quick look

Every counted trial has at least one kill (a job that finishes before its first
kill is redone). Prints one line per trial and a tally; exits 1 if any trial differs
or fails.
Needs only the Python standard library.
"""
import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMING = {"clips_per_s", "data_wait", "seconds", "elapsed_s"}


def tensor_hash(path):
    """sha256 over names, dtypes, shapes and bytes of a safetensors file's tensors."""
    b = Path(path).read_bytes()
    n = struct.unpack("<Q", b[:8])[0]
    hdr = json.loads(b[8:8 + n])
    data = b[8 + n:]
    h = hashlib.sha256()
    for k in sorted(x for x in hdr if x != "__metadata__"):
        v = hdr[k]
        s, e = v["data_offsets"]
        h.update(k.encode() + v["dtype"].encode() + str(v["shape"]).encode())
        h.update(data[s:e])
    return h.hexdigest()


def metrics(path):
    """metrics.jsonl without the timing fields, as a list of sorted items."""
    if not Path(path).exists():
        return None
    out = []
    for line in Path(path).read_text().splitlines():
        j = json.loads(line)
        out.append(sorted((k, v) for k, v in j.items() if k not in TIMING))
    return out


def strip(j):
    """An eval JSON without paths and timings."""
    if isinstance(j, dict):
        return {k: strip(v) for k, v in j.items()
                if k not in TIMING | {"run", "weights", "dir", "out"}}
    if isinstance(j, list):
        return [strip(v) for v in j]
    return j


def fingerprint(run):
    """Everything of a run directory that a resumed run must reproduce."""
    run = Path(run)
    fp = {}
    for p in sorted(run.rglob("*.safetensors")):
        rel = p.relative_to(run)
        if "checkpoints" in rel.parts:
            continue  # how many are kept depends on where the kills fell
        fp[str(rel)] = tensor_hash(p)
    for p in sorted(run.rglob("metrics.jsonl")):
        fp[str(p.relative_to(run))] = hashlib.sha256(
            repr(metrics(p)).encode()).hexdigest()
    for p in sorted(run.rglob("*.json")):
        rel = p.relative_to(run)
        if p.parent.name == "eval" or "eval" in rel.parts[:-1]:
            if p.name in ("state.json",):
                continue
            try:
                j = strip(json.loads(p.read_text()))
            except ValueError:
                j = p.read_text()
            fp[str(rel)] = hashlib.sha256(
                json.dumps(j, sort_keys=True).encode()).hexdigest()
    return fp


class Runner:
    def __init__(self, args):
        self.bin = str(Path(args.bin).resolve())
        self.rng = random.Random(args.seed)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("VSSL_")}
        self.env["VSSL_LOG"] = "warn"
        self.max_attempts = args.max_attempts
        self.kinds = {"timer": 0, "step": 0, "write": 0}

    def once(self, cmd, extra_env=None, kill_after=None):
        """Runs cmd in its own process group; kills the group after kill_after s."""
        env = dict(self.env, **(extra_env or {}))
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, start_new_session=True)
        try:
            _, err = p.communicate(timeout=kill_after)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            return "killed", ""
        if p.returncode == 0:
            return "done", ""
        if p.returncode == -signal.SIGKILL:
            # The crash hook fired; its children may still run.
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return "killed", ""
        return "failed", err.decode(errors="replace")[-2000:]

    def until_done(self, first, again, ref_seconds, steps, retry_failed=False):
        """Runs `first`, then `again` after every kill, until one finishes. With
        `retry_failed` (sweeps), a non-zero exit also means "run it again": a sweep
        whose child was killed by a crash hook records that point as failed."""
        kills, cmd = 0, first
        for _ in range(self.max_attempts):
            kind = self.rng.choice(["timer", "timer", "step", "write"])
            extra, after = {}, None
            if kind == "timer":
                after = self.rng.uniform(0.05, 1.1) * ref_seconds
            elif kind == "step":
                extra["VSSL_CRASH_AT_STEP"] = str(self.rng.randint(1, steps))
                after = 3 * ref_seconds + 60  # a hang guard, never a kill moment
            else:
                extra["VSSL_CRASH_AT_WRITE"] = str(self.rng.randint(1, 3))
                after = 3 * ref_seconds + 60
            state, err = self.once(cmd, extra, after)
            if state == "done":
                return kills, None
            if state == "failed" and not retry_failed:
                return kills, err
            kills += 1
            self.kinds[kind] += 1
            cmd = again
        return kills, f"not finished after {self.max_attempts} attempts"


def timed(r, cmd):
    t = time.time()
    state, err = r.once(cmd)
    if state != "done":
        sys.exit(f"reference run failed: {' '.join(cmd)}\n{err}")
    return time.time() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=str(ROOT / "target/release/vssl"))
    ap.add_argument("--recipe", default="experiments/quickstart.toml")
    ap.add_argument("--steps", type=int, default=40,
                    help="train.steps of each run (the quick recipe's own is 300)")
    ap.add_argument("--checkpoint-every", type=int, default=5)
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--train", type=int, default=20, help="trials of vssl train")
    ap.add_argument("--finetune", type=int, default=10, help="trials of fine-tuning")
    ap.add_argument("--sweep", type=int, default=5, help="trials of a 4-point sweep")
    ap.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    ap.add_argument("--max-attempts", type=int, default=60)
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    args = ap.parse_args()
    if not Path(args.bin).is_file():
        sys.exit(f"{args.bin}: no vssl binary (cargo build --release --features crash-hook)")
    work = Path(args.work or f"/tmp/vssl-soak-{os.getpid()}")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    r = Runner(args)
    sets = ["--set", f"train.steps={args.steps}",
            "--set", f"train.checkpoint_every={args.checkpoint_every}",
            "--set", "train.log_every=1"]
    train = lambda out: [r.bin, "train", args.recipe, "--out", str(out), "--device", "cpu"] + sets
    tally = {"train": [0, 0, 0], "finetune": [0, 0, 0], "sweep": [0, 0, 0]}
    bad = []

    def trial(kind, i, out, first, again, ref_fp, ref_s, steps, prepare=None):
        # A trial counts only if at least one kill landed: a job that finished before
        # its first kill is redone from scratch.
        for _ in range(10):
            if out.exists():
                shutil.rmtree(out)
            if prepare:
                prepare(out)
            kills, err = r.until_done(first, again, ref_s, steps,
                                      retry_failed=kind == "sweep")
            if kills or err:
                break
            print(f"{kind} trial {i + 1}: finished before any kill landed; redone", flush=True)
        same = err is None and fingerprint(out) == ref_fp
        t = tally[kind]
        t[0] += 1
        t[1] += same
        t[2] += kills
        status = "identical" if same else ("FAILED: " + err if err else "DIFFERENT")
        print(f"{kind} trial {i + 1}: {kills} kills, {status}", flush=True)
        if not same:
            bad.append((kind, i, out))
            if err is None:
                got = fingerprint(out)
                for k in sorted(set(ref_fp) | set(got)):
                    if ref_fp.get(k) != got.get(k):
                        print(f"  {k}: {ref_fp.get(k)} vs {got.get(k)}")

    if args.train or args.finetune:
        ref = work / "train-ref"
        ref_s = timed(r, train(ref))
        ref_fp = fingerprint(ref)
        print(f"reference train run: {ref_s:.1f} s, {len(ref_fp)} fingerprinted files", flush=True)
        for i in range(args.train):
            out = work / f"train-{i}"
            trial("train", i, out, train(out), train(out) + ["--resume"], ref_fp, ref_s,
                  args.steps)
    if args.finetune:
        ft = ["--protocol", "finetune", "--device", "cpu",
              "--set", f"eval.finetune_epochs={args.finetune_epochs}"]
        pre = work / "train-ref"
        ref = work / "finetune-ref"
        shutil.copytree(pre, ref)
        ref_s = timed(r, [r.bin, "eval", str(ref)] + ft)
        ref_fp = fingerprint(ref)
        ft_steps = max(json.loads(l)["step"] for m in (ref / "eval").rglob("metrics.jsonl")
                       for l in m.read_text().splitlines())
        print(f"reference fine-tuning: {ref_s:.1f} s, {ft_steps} steps", flush=True)
        for i in range(args.finetune):
            out = work / f"finetune-{i}"
            cmd = [r.bin, "eval", str(out)] + ft
            trial("finetune", i, out, cmd, cmd + ["--resume"], ref_fp, ref_s, ft_steps,
                  prepare=lambda o: shutil.copytree(pre, o))
    if args.sweep:
        spec = work / "soak_sweep.toml"
        spec.write_text(
            f'name = "soak"\nbase = "{(ROOT / args.recipe).resolve()}"\n'
            f'seeds = [0, 1]\neval = ["linear"]\n[grid]\n"train.lr" = [0.001, 0.002]\n')
        ssets = ["--set", f"train.steps={max(args.steps // 2, 4)}",
                 "--set", f"train.checkpoint_every={args.checkpoint_every}",
                 "--set", "train.log_every=1", "--device", "cpu"]
        ref = work / "sweep-ref"
        ref_s = timed(r, [r.bin, "sweep", str(spec), "--out", str(ref)] + ssets)
        ref_fp = fingerprint(ref)
        print(f"reference sweep: {ref_s:.1f} s, {len(ref_fp)} fingerprinted files", flush=True)
        for i in range(args.sweep):
            out = work / f"sweep-{i}"
            cmd = [r.bin, "sweep", str(spec), "--out", str(out)] + ssets
            trial("sweep", i, out, cmd, cmd, ref_fp, ref_s, max(args.steps // 2, 4))
    print("tally (trials, bit-identical, kills):",
          ", ".join(f"{k} {v[0]}/{v[1]}/{v[2]}" for k, v in tally.items() if v[0]))
    print("kills by kind:", ", ".join(f"{k} {v}" for k, v in r.kinds.items()))
    if bad:
        print(f"{len(bad)} trial(s) differ; their folders are kept under {work}")
        sys.exit(1)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
