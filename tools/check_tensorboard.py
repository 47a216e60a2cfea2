#!/usr/bin/env python3
"""Reads a vssl run's TensorBoard event files with TensorBoard's own reader
(EventAccumulator, from the `tensorboard` package on PyPI) and checks that every
scalar is there at the right step with the right value:

- each metrics.jsonl line at step s: train/loss, every method scalar (train/<k>),
  train/grad_norm, lr/<group>, perf/clips_per_s, perf/data_wait;
- each eval/<stem>.json: every numeric metric as eval/<stem>/<metric> at the step
  of the evaluated weights;
- each fine-tuning sub-run (eval/<stem>/tb): its loss per epoch and test/top1 ...;
- hparams/recipe text equal to recipe.resolved.toml;
- one value per tag and step (a resumed run must not duplicate steps).

Usage:  python3 tools/check_tensorboard.py [RUN_DIR]
Without RUN_DIR it trains a shortened quick start (experiments/quickstart.toml,
60 steps) into a temporary folder and evaluates it (linear, knn, finetune) with the
release binary (target/release/vssl, built if missing). The reader runs in its own
virtual environment (VSSL_TB_VENV, default /tmp/vssl-tb-venv), created on first use.
"""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.environ.get("VSSL_TB_VENV", "/tmp/vssl-tb-venv")


def in_venv():
    try:
        import tensorboard  # noqa: F401
        return True
    except ImportError:
        return False


def reexec_in_venv():
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
    subprocess.check_call([py, "-m", "pip", "install", "-q", "tensorboard"])
    os.execv(py, [py] + sys.argv)


def vssl(*args):
    exe = os.path.join(ROOT, "target", "release", "vssl")
    if not os.path.exists(exe):
        subprocess.check_call(["cargo", "build", "--release"], cwd=ROOT)
    print("+ vssl " + " ".join(args), flush=True)
    subprocess.check_call([exe, "--device", "cpu", *args], cwd=ROOT)


def make_run(tmp):
    run = os.path.join(tmp, "quickstart")
    sets = ["--set", "train.steps=60", "--set", "train.log_every=10",
            "--set", "train.checkpoint_every=30", "--set", "eval.finetune_epochs=2",
            "--set", "eval.test_every=1"]
    vssl("train", "experiments/quickstart.toml", "--out", run, *sets)
    vssl("eval", run, "--protocol", "linear,knn,finetune")
    return run


def accumulate(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(logdir, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def numeric_leaves(v, prefix, out):
    if isinstance(v, bool):
        return
    if isinstance(v, (int, float)):
        out[prefix] = float(v)
    elif isinstance(v, dict):
        for k, x in v.items():
            if k != "history":
                numeric_leaves(x, f"{prefix}.{k}" if prefix else k, out)


class Checker:
    def __init__(self):
        self.checked = 0
        self.failures = []

    def scalars(self, acc, where):
        out = {}
        for tag in acc.Tags()["scalars"]:
            events = acc.Scalars(tag)
            steps = [e.step for e in events]
            if len(steps) != len(set(steps)):
                self.failures.append(f"{where}: {tag}: duplicate steps {sorted(steps)}")
            out[tag] = {e.step: e.value for e in events}
        return out

    def expect(self, got, tag, step, want, where):
        self.checked += 1
        have = got.get(tag, {}).get(step)
        if have is None:
            self.failures.append(f"{where}: {tag} missing at step {step}")
        elif abs(have - want) > 1e-6 * abs(want) + 1e-30:
            # Scalars are stored as f32: equal to 6 significant digits.
            self.failures.append(f"{where}: {tag} at step {step}: {have} != {want}")

    def loop(self, run, where):
        """A training loop's log: metrics.jsonl against tb/."""
        acc = accumulate(os.path.join(run, "tb"))
        got = self.scalars(acc, where)
        groups = sorted(t for t in got if t.startswith("lr/"))
        if not groups:
            self.failures.append(f"{where}: no lr/<group> scalar")
        lines = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
        for line in lines:
            s = line["step"]
            for k, v in line.items():
                if k in ("step", "skipped_videos"):
                    continue
                tag = {"loss": "train/loss", "grad_norm": "train/grad_norm",
                       "clips_per_s": "perf/clips_per_s", "data_wait": "perf/data_wait"}.get(k)
                if k == "lr":
                    continue  # per group below
                self.expect(got, tag or f"train/{k}", s, v, where)
            for g in groups:
                if s not in got[g]:
                    self.failures.append(f"{where}: {g} missing at step {s}")
                self.checked += 1
        logged = {l["step"] for l in lines}
        extra = set(got.get("train/loss", {})) - logged
        if extra:
            self.failures.append(f"{where}: train/loss at steps not in metrics.jsonl: {sorted(extra)}")
        recipe = acc.Tensors("hparams/recipe") if "hparams/recipe" in acc.Tags()["tensors"] else []
        want = open(os.path.join(run, "recipe.resolved.toml")).read() if os.path.exists(
            os.path.join(run, "recipe.resolved.toml")) else None
        if not recipe:
            self.failures.append(f"{where}: no hparams/recipe text")
        elif want is not None and want.strip() not in recipe[-1].tensor_proto.string_val[0].decode():
            self.failures.append(f"{where}: hparams/recipe is not recipe.resolved.toml")
        print(f"{where}: {len(lines)} logged steps, {len(got)} scalar tags "
              f"({', '.join(sorted(got))}), recipe text {len(recipe)}")
        return got

    def evals(self, run, got, step):
        eval_dir = os.path.join(run, "eval")
        for name in sorted(os.listdir(eval_dir)) if os.path.isdir(eval_dir) else []:
            if not name.endswith(".json"):
                continue
            stem = name[:-5]
            body = json.load(open(os.path.join(eval_dir, name)))
            leaves = {}
            numeric_leaves(body.get("metrics", body.get("mean", {})), "", leaves)
            for k, v in leaves.items():
                self.expect(got, f"eval/{stem}/{k}", step, v, run)
            print(f"{run}: eval/{stem}: {len(leaves)} metrics at step {step}")
            sub = os.path.join(eval_dir, stem)
            if os.path.isdir(os.path.join(sub, "tb")):
                ft = self.loop(sub, sub)
                tests = ft.get("test/top1", {})
                if len(tests) != len(body["metrics"]["history"]):
                    self.failures.append(f"{sub}: {len(tests)} test/top1 points, "
                                         f"{len(body['metrics']['history'])} tests in history")
                for (s, v), h in zip(sorted(tests.items()), body["metrics"]["history"]):
                    self.checked += 1
                    if abs(v - h["top1"]) > 1e-6:
                        self.failures.append(f"{sub}: test/top1 at {s}: {v} != {h['top1']}")


def main():
    if not in_venv():
        reexec_in_venv()
    with tempfile.TemporaryDirectory() as tmp:
        run = sys.argv[1] if len(sys.argv) > 1 else make_run(tmp)
        c = Checker()
        got = c.loop(run, run)
        state = json.load(open(os.path.join(run, "state.json")))
        c.evals(run, got, state["total"])
        if c.failures:
            print("\n".join(["FAILED:"] + c.failures))
            sys.exit(1)
        print(f"OK: {c.checked} scalar values read back by EventAccumulator at their steps")


if __name__ == "__main__":
    main()
