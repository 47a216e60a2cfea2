#!/usr/bin/env python3
"""Checks a `vssl export` folder with the tools a PyTorch user has.

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch torchvision safetensors pyyaml
    /tmp/torchenv/bin/python tools/check_export.py EXPORT_DIR \
        [--clips CLIPS.safetensors --features VSSL_FEATURES.safetensors]

1. `model.safetensors` opens in Python's safetensors with its metadata (format, recipe,
   vssl version, input convention);
2. the weights load into torchvision's model (built from `config.json`) with
   `load_state_dict(strict=True)` once `fc` is an Identity (a fine-tuned export keeps
   its `fc` with `num_classes` from config.json);
3. with --clips (a safetensors `clips` [N,3,T,H,W], normalised) and --features (what
   `vssl extract` wrote for them), torchvision's features equal vssl's
   (max abs diff <= 1e-5);
4. the model card's front matter parses as YAML and its model-index is listed.
Exits non-zero on any failure.
"""
import argparse
import json
import os
import sys

import torch
import torchvision
import yaml
from safetensors import safe_open
from safetensors.torch import load_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("export_dir")
    ap.add_argument("--clips")
    ap.add_argument("--features")
    ap.add_argument("--tol", type=float, default=1e-5)
    a = ap.parse_args()
    torch.set_num_threads(2)
    weights = os.path.join(a.export_dir, "model.safetensors")
    with safe_open(weights, framework="pt") as f:
        meta = f.metadata()
        n = len(list(f.keys()))
    for k in ["format", "recipe", "vssl_version", "input", "arch"]:
        assert k in meta, f"metadata key {k} missing"
    assert meta["format"] == "pt"
    inp = json.loads(meta["input"])
    print(f"safetensors: {n} tensors; metadata keys {sorted(meta)}; input {inp}")

    cfg = json.load(open(os.path.join(a.export_dir, "config.json")))
    arch = cfg.get("torchvision_arch")
    assert arch, f"{cfg['arch']} has no torchvision constructor"
    classes = cfg.get("num_classes")
    if classes:  # a fine-tuned export: backbone + classifier
        model = getattr(torchvision.models.video, arch)(num_classes=classes)
    else:
        model = getattr(torchvision.models.video, arch)()
        model.fc = torch.nn.Identity()
    model.load_state_dict(load_file(weights), strict=True)
    model.eval()
    print(f"torchvision.models.video.{arch}: load_state_dict(strict=True) ok")

    if a.clips and a.features:
        x = load_file(a.clips)["clips"]
        want = load_file(a.features)["features"]
        with torch.no_grad():
            got = model(x)
        diff = float((got - want).abs().max())
        print(f"features {tuple(got.shape)}: torchvision vs vssl extract max abs diff {diff:.3e} "
              f"(|f| max {float(want.abs().max()):.3f})")
        assert diff <= a.tol, f"max abs diff {diff} > {a.tol}"

    card = open(os.path.join(a.export_dir, "README.md")).read()
    assert card.startswith("---\n")
    front = yaml.safe_load(card.split("\n---\n")[0][4:])
    results = (front.get("model-index") or [{}])[0].get("results", [])
    metrics = sum(len(r["metrics"]) for r in results)
    print(f"card: YAML ok; library_name={front['library_name']} pipeline_tag={front['pipeline_tag']} "
          f"tags={front['tags']}; model-index: {len(results)} results, {metrics} metrics")
    return 0


if __name__ == "__main__":
    sys.exit(main())
