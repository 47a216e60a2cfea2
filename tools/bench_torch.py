#!/usr/bin/env python3
"""PyTorch reference for `vssl bench model`: the same network and training step.

Builds torchvision's video ResNet (r3d_18, mc3_18 or r2plus1d_18) with a 10-class
`fc`, SGD (lr 0.01, momentum 0.9, weight decay 1e-4) and a cross-entropy loss on a
random clip batch, with torch.set_num_threads(cores), on `--device` (cpu, or
cuda:N with cuDNN autotuning on, as a PyTorch user trains; each timing waits for
the GPU).

Two modes:
- standalone: `bench_torch.py --arch r3d_18 --batch 8 --frames 8 --size 64 --reps 3`
  prints one JSON line with median forward and step seconds and peak RSS;
- `--serve`: after warm-up, reads commands from stdin, one per line (`fwd` or
  `step`), and answers each with the seconds it took, so `vssl bench model` can
  interleave its own repeats with PyTorch's in the same run. `rss` answers the peak
  RSS in KiB; EOF ends it.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import torchvision.models.video as tvm


def synced(dev):
    """A clock read that first waits for `dev`'s queued work."""
    def now():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter()
    return now


def build(arch, classes):
    ctor = {"r3d_18": tvm.r3d_18, "mc3_18": tvm.mc3_18, "r2plus1d_18": tvm.r2plus1d_18}[arch]
    return ctor(weights=None, num_classes=classes)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="r3d_18")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--serve", action="store_true")
    p.add_argument("--device", default="cpu", help="cpu or cuda:N")
    p.add_argument("--conv", help="benchmark one Conv3d instead: C,O,k,stride,pad "
                   "(input batch x C x frames x size x size); `conv` answers fwd+bwd seconds")
    a = p.parse_args()
    if a.conv:
        return conv_main(a)

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    torch.backends.cudnn.benchmark = True
    # Plain f32 arithmetic on both sides: vssl's cuDNN convolutions and cuBLAS
    # matmuls run without TF32, PyTorch's would use it by default.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    now = synced(dev)
    classes = 10
    model = build(a.arch, classes).train().to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(a.batch, 3, a.frames, a.size, a.size, device=dev)
    labels = torch.randint(0, classes, (a.batch,), device=dev)

    def fwd():
        t = now()
        with torch.no_grad():
            model(x)
        return now() - t

    def step():
        t = now()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), labels)
        loss.backward()
        opt.step()
        return now() - t

    for _ in range(a.warmup):
        step()

    def rss_kib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    if a.serve:
        print("ready", flush=True)
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "fwd":
                print(f"{fwd():.6f}", flush=True)
            elif cmd == "step":
                print(f"{step():.6f}", flush=True)
            elif cmd == "rss":
                print(rss_kib(), flush=True)
            elif cmd:
                print(f"error unknown command {cmd!r}", flush=True)
        return

    f = [fwd() for _ in range(a.reps)]
    s = [step() for _ in range(a.reps)]
    print(json.dumps({
        "torch": torch.__version__, "threads": torch.get_num_threads(), "arch": a.arch,
        "batch": a.batch, "frames": a.frames, "size": a.size,
        "forward_s": statistics.median(f), "step_s": statistics.median(s),
        "peak_rss_kib": rss_kib(),
    }))


def conv_main(a):
    """One Conv3d layer (no bias): `fwd` times the forward pass, `conv` forward plus
    backward (input and weight gradients)."""
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    torch.backends.cudnn.benchmark = True
    # Plain f32 arithmetic on both sides: vssl's cuDNN convolutions and cuBLAS
    # matmuls run without TF32, PyTorch's would use it by default.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    now = synced(dev)
    c, o, k, s, pad = (int(v) for v in a.conv.split(","))
    conv = torch.nn.Conv3d(c, o, k, stride=s, padding=pad, bias=False).to(dev)
    x = torch.randn(a.batch, c, a.frames, a.size, a.size, device=dev, requires_grad=True)

    def fwd():
        t = now()
        with torch.no_grad():
            conv(x)
        return now() - t

    def both():
        t = now()
        x.grad = None
        conv.weight.grad = None
        conv(x).sum().backward()
        return now() - t

    both()
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "fwd":
            print(f"{fwd():.6f}", flush=True)
        elif cmd == "conv":
            print(f"{both():.6f}", flush=True)
        elif cmd:
            print(f"error unknown command {cmd!r}", flush=True)


if __name__ == "__main__":
    main()
