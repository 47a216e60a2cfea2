#!/usr/bin/env python3
"""Reference features from torchvision's video ResNets, for vssl's equivalence tests.

Weights and inputs are a closed-form formula (see `formula`), implemented identically in
tests/it/torchvision.rs, so the fixture holds only the expected outputs (a few KB) and
the tests never need PyTorch.

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch torchvision safetensors
    /tmp/torchenv/bin/python tools/torchvision_features.py            # writes the fixture
    /tmp/torchenv/bin/python tools/torchvision_features.py --check-export W.safetensors --arch r3d_18
        # loads a vssl-exported safetensors into torchvision (strict) and prints its features

Also prints, for the note, a full-size (1x3x16x112x112) run per arch.
"""
import argparse
import math
import sys

import torch
import torchvision
from safetensors.torch import save_file, load_file

ARCHS = ["r3d_18", "mc3_18", "r2plus1d_18"]


def name_hash(name: str) -> int:
    return sum(ord(c) * (i + 1) for i, c in enumerate(name)) % 1000


def formula(name: str, shape) -> torch.Tensor:
    n = math.prod(shape) if len(shape) else 1
    i = torch.arange(n, dtype=torch.float64)
    base = torch.sin(0.37 * i + 0.01 * name_hash(name))
    if name.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    if name.endswith("running_var"):
        v = 1.0 + 0.25 * (base + 1.0)
    elif name.endswith("running_mean"):
        v = 0.1 * base
    elif name.endswith("bias"):
        v = 0.05 * base
    elif len(shape) == 1:  # norm weight
        v = 1.0 + 0.1 * base
    else:  # conv / linear weight: std about sqrt(2 / fan_in)
        fan_in = math.prod(shape[1:])
        v = base * 2.0 / math.sqrt(fan_in)
    return v.reshape(shape).to(torch.float32)


def clip(shape) -> torch.Tensor:
    n = math.prod(shape)
    i = torch.arange(n, dtype=torch.float64)
    return torch.sin(0.013 * i).reshape(shape).to(torch.float32)


def model(arch: str) -> torch.nn.Module:
    m = getattr(torchvision.models.video, arch)()
    sd = {k: formula(k, tuple(v.shape)) for k, v in m.state_dict().items()}
    m.load_state_dict(sd, strict=True)
    m.fc = torch.nn.Identity()  # pooled features, before the classifier
    return m.eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/torchvision_features.safetensors")
    ap.add_argument("--check-export")
    ap.add_argument("--arch", default="r3d_18")
    ap.add_argument("--write-pth", help="write the formula weights of --arch (with a 400-class fc) as a .pth")
    ap.add_argument("--write-clips", help="write the full-size formula clip as safetensors `clips`")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.write_pth:
        m = getattr(torchvision.models.video, args.arch)()
        sd = {k: formula(k, tuple(v.shape)) for k, v in m.state_dict().items()}
        torch.save(sd, args.write_pth)
        print(f"wrote {args.write_pth}: {len(sd)} tensors")
        return
    if args.write_clips:
        save_file({"clips": clip((1, 3, 16, 112, 112))}, args.write_clips)
        return
    if args.check_export:
        m = getattr(torchvision.models.video, args.arch)()
        sd = load_file(args.check_export)
        missing, unexpected = m.load_state_dict(sd, strict=True)
        print(f"load_state_dict(strict=True): ok ({len(sd)} tensors)")
        m.fc = torch.nn.Identity()
        m.eval()
        ref = model(args.arch)
        x = clip((1, 3, 16, 112, 112))
        with torch.no_grad():
            a, b = m(x), ref(x)
        print(f"{args.arch} 1x3x16x112x112: exported-into-torchvision vs formula model max abs diff {float((a - b).abs().max()):.3e}")
        torch.save(a, "/tmp/export_features.pt")
        save_file({"features": a.contiguous()}, "/tmp/export_features.safetensors")
        return
    out = {}
    x = clip((1, 3, 8, 32, 32))
    for arch in ARCHS:
        m = model(arch)
        with torch.no_grad():
            out[arch] = m(x).contiguous()
            big = m(clip((1, 3, 16, 112, 112)))
        print(f"{arch}: small {tuple(out[arch].shape)} |f|={float(out[arch].norm()):.4f}; 1x3x16x112x112 |f|={float(big.norm()):.4f} f[:3]={big[0, :3].tolist()}")
        save_file({"features": big.contiguous()}, f"/tmp/{arch}_big_features.safetensors")
    save_file(out, args.out, metadata={"input": "sin(0.013 i), shape [1,3,8,32,32]", "torch": torch.__version__, "torchvision": torchvision.__version__})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
