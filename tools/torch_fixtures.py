#!/usr/bin/env python3
"""Regenerates the PyTorch fixtures under tests/fixtures/ used by the
`import_extract` integration tests. The tests themselves never need torch.

Usage (any Python with torch, torchvision and safetensors):

    python tools/torch_fixtures.py [--out tests/fixtures]

It writes:

- tiny_state.pth          torch.save({"epoch": 3, "state_dict": {"module.<name>": tensor}})
                          with exactly the names and shapes of vssl's `r3d_small`
                          backbone configured with widths [2, 2, 2, 2] and layers
                          [1, 1, 1, 1] (72 entries; seeded random values;
                          num_batches_tracked int64);
- tiny_state_extra.pth    the same plus one unexpected key (`module.extra_head.weight`);
- tiny_state_badshape.pth the same with `layer3.0.conv1.0.weight` of a wrong shape;
- tiny_state_model.pth    the plain state dict (no `module.` prefix) under "model";
- tiny_state_tclr.pth     TCLR's released layout: `nn.Sequential(backbone, head)` under
                          DataParallel, i.e. {"state_dict": {"module.0.<name>": ...,
                          "module.1.weight", "module.1.bias"}} with the same backbone
                          values as tiny_state.pth;
- tiny_io.safetensors     `clips` [2, 3, 4, 16, 16] (random, as if normalised) and
                          `features` [2, 2]: the network's globally average-pooled
                          output in eval mode, computed by PyTorch, to check that vssl
                          computes the same function.

torchvision's VideoResNet fixes its widths at 64..512, so the network is a small
module that mirrors its structure and names (BasicStem, BasicBlock with
Conv3DSimple, downsample = Conv3d 1x1x1 + BatchNorm3d); the script checks that its
state-dict names, and the shapes of everything but the channel dimensions, equal
those of torchvision's VideoResNet(BasicBlock, [Conv3DSimple] * 4, [1, 1, 1, 1],
BasicStem).
"""

import argparse
import os

import torch
import torch.nn as nn
from safetensors.torch import save_file

WIDTHS = [2, 2, 2, 2]
LAYERS = [1, 1, 1, 1]
SEED = 20240611


class Block(nn.Module):
    """torchvision's BasicBlock with Conv3DSimple."""

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv3d(cin, planes, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm3d(planes),
            nn.ReLU(inplace=True),
        )
        self.conv2 = nn.Sequential(
            nn.Conv3d(planes, planes, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm3d(planes),
        )
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(
                nn.Conv3d(cin, planes, 1, stride=stride, bias=False),
                nn.BatchNorm3d(planes),
            )

    def forward(self, x):
        y = self.conv2(self.conv1(x))
        skip = x if self.downsample is None else self.downsample(x)
        return torch.relu(y + skip)


class TinyR3D(nn.Module):
    """vssl's r3d_small: R3D topology, stem width = widths[0], no classifier."""

    def __init__(self, widths, layers):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(3, widths[0], (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
            nn.BatchNorm3d(widths[0]),
            nn.ReLU(inplace=True),
        )
        cin = widths[0]
        for i in range(4):
            blocks = []
            for j in range(layers[i]):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(Block(cin, widths[i], stride))
                cin = widths[i]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))

    def pooled(self, x):
        x = self.stem(x)
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
        return x.mean(dim=(2, 3, 4))


def check_against_torchvision(sd):
    """Same names as torchvision's VideoResNet with layers [1,1,1,1]; same shapes
    apart from channel counts (dims 0 and 1)."""
    try:
        from torchvision.models.video.resnet import BasicBlock, BasicStem, Conv3DSimple, VideoResNet
    except ImportError:
        print("torchvision not available: skipping the name check")
        return
    tv = VideoResNet(BasicBlock, [Conv3DSimple] * 4, LAYERS, BasicStem).state_dict()
    tv = {k: v for k, v in tv.items() if not k.startswith("fc.")}
    assert sorted(tv) == sorted(sd), (sorted(set(tv) ^ set(sd)))
    for k, v in sd.items():
        assert v.dim() == tv[k].dim(), k
        assert v.shape[2:] == tv[k].shape[2:], k
        assert v.dtype == tv[k].dtype, k


def randomise(model, gen):
    sd = {}
    for name, t in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            v = torch.randint(0, 1000, (), generator=gen, dtype=torch.int64)
        elif name.endswith("running_var"):
            v = torch.rand(t.shape, generator=gen) + 0.5
        elif name.endswith("running_mean"):
            v = torch.randn(t.shape, generator=gen) * 0.1
        elif name.endswith(".bias"):
            # Positive shifts keep the ReLUs of a 2-channel network alive.
            v = torch.rand(t.shape, generator=gen) * 0.5 + 0.1
        elif t.dim() == 1:  # batch-norm weight
            v = torch.rand(t.shape, generator=gen) + 0.5
        else:  # convolution: Kaiming-normal, fan-in
            fan_in = t[0].numel()
            v = torch.randn(t.shape, generator=gen) * (2.0 / fan_in) ** 0.5
        sd[name] = v.to(t.dtype).contiguous().clone()
    model.load_state_dict(sd)
    return sd


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    gen = torch.Generator().manual_seed(SEED)
    model = TinyR3D(WIDTHS, LAYERS)
    sd = randomise(model, gen)
    assert len(sd) == 72, len(sd)
    check_against_torchvision(sd)

    def save(obj, name):
        path = os.path.join(args.out, name)
        torch.save(obj, path)
        size = os.path.getsize(path)
        assert size < 200_000, (name, size)
        print(f"wrote {os.path.normpath(path)} ({size} bytes)")

    wrapped = {f"module.{k}": v for k, v in sd.items()}
    save({"epoch": 3, "state_dict": wrapped}, "tiny_state.pth")

    extra = dict(wrapped)
    extra["module.extra_head.weight"] = torch.randn(4, 2, generator=gen)
    save({"epoch": 3, "state_dict": extra}, "tiny_state_extra.pth")

    bad = dict(wrapped)
    bad["module.layer3.0.conv1.0.weight"] = torch.randn(3, 2, 3, 3, 3, generator=gen)
    save({"epoch": 3, "state_dict": bad}, "tiny_state_badshape.pth")

    save({"model": {k: v.clone() for k, v in sd.items()}}, "tiny_state_model.pth")

    model.eval()
    clips = torch.randn(2, 3, 4, 16, 16, generator=gen)
    with torch.no_grad():
        feats = model.pooled(clips)
    assert feats.abs().sum() > 0, "all features are zero: pick another seed"
    path = os.path.join(args.out, "tiny_io.safetensors")
    save_file({"clips": clips.contiguous(), "features": feats.contiguous()}, path)
    print(f"wrote {os.path.normpath(path)} ({os.path.getsize(path)} bytes); features {feats.tolist()}")

    head_gen = torch.Generator().manual_seed(SEED + 1)
    tclr = {f"module.0.{k}": v.clone() for k, v in sd.items()}
    tclr["module.1.weight"] = torch.randn(8, WIDTHS[3], generator=head_gen)
    tclr["module.1.bias"] = torch.randn(8, generator=head_gen)
    save({"state_dict": tclr}, "tiny_state_tclr.pth")


if __name__ == "__main__":
    main()
