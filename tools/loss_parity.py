#!/usr/bin/env python3
"""Writes tests/fixtures/loss_parity.safetensors: the authors' losses restated in
PyTorch (float64, CPU) on small seeded inputs, with their values and input
gradients, for the `loss_parity` integration tests (which never need torch).

Usage (any Python with torch and safetensors):

    python tools/loss_parity.py [--out tests/fixtures/loss_parity.safetensors]

Every loss below is restated here from its description in /work/shared/METHODS.md
(which summarises the public code: TCLR `train_gen_all_step.py`,
`nt_xent_original.py`, `global_local_temporal_contrastive.py`; VTDL's MoCo-style
memory bank; CtP's `pyvrl` heads for 3DRotNet), written afresh, none of it copied.

Inputs are stored in vssl's row order:

- TCLR (B videos, V = 2 views, N = 4 dense clips, S = 4 slices, D features), raw
  (not yet unit) projections, normalised here as vssl's projection head does:
  `tclr.sparse` [B*V, D] rows (video, view); `tclr.dense` [B*V*N, D] rows
  (video, view, clip); `tclr.slices` [B*V, S, D] rows (video, view). GL's local
  features are the dense rows (S = N).
- VTDL: unit `vtdl.q`, `vtdl.k`, `vtdl.n` [B, D], `vtdl.queue` [K, D]; enqueue
  cases; EMA tensors; TCA clips.
- `ce.rot.*`, `ce.speed.*`: head logits and targets.

Outputs are `<term>` (a scalar, shape [1]) and `<term>.grad.<input>` (d term /
d input). Terms (all restating the public code unless named `vssl_*`):

- `tclr.ic_sparse`: NT-Xent between the sparse clip's two views (mean over 2B rows);
- `tclr.ic_dense_pairwise`: the code's dense instance loop, NT-Xent between every
  ordered pair of distinct (view, part) slots (each with its own 2(B-1) negatives),
  56 terms summed and divided by 4;
- `tclr.vssl_ic_dense_multi`: vssl's documented multi-positive form (one NT-Xent
  over all 8B dense rows: positives the same video's 7 other rows, negatives the
  other videos' rows), restated from its definition as a check of that code path;
- `tclr.ll_sum`: per video, NT-Xent among its 4 dense clips x 2 views, summed over
  videos;
- `tclr.gl_code`: per (sparse view, dense view) pair, cross-entropy on each video's
  4x4 slice-vs-clip similarity matrix toward the diagonal in both directions,
  `reduction = sum` divided by 2B, summed over the 4 view pairs;
- `tclr.total_code`: ic_sparse + ic_dense_pairwise + ll_sum + gl_code;
- `vtdl.logits` [B, 1+K+1] = [q.k, q.queue, q.n] / tau and `vtdl.nce` = mean
  cross-entropy toward column 0;
- `vtdl.enqueue_a` / `_b`: FIFO with wrap-around (`_b` pushes more keys than fit);
- `vtdl.ema`: m * target + (1 - m) * source;
- `vtdl.tca`: (1 - l_i) x_t + l_i x_{r_i}; its gradient is d sum(tca * w) / d x;
- `ce.rot`, `ce.speed`: mean cross-entropy of the rotation (4 classes) and
  speed-sort (3! = 6 permutations) heads.
"""

import argparse
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

torch.set_default_dtype(torch.float64)

B, V, N, S, D = 3, 2, 4, 4, 8
TAU_TCLR = 0.1
TAU_VTDL = 0.07


def nt_xent(x1, x2, tau):
    """SimCLR NT-Xent between aligned batches (row i of x1 <-> row i of x2): 2B
    anchors, each with its partner as positive and the other 2B - 2 rows as negatives
    (the denominator holds the positive and the negatives), mean over anchors."""
    z = torch.cat([x1, x2], 0)
    sim = torch.exp(z @ z.t() / tau)
    off = ~torch.eye(z.shape[0], dtype=torch.bool)
    denom = sim.masked_select(off).view(z.shape[0], -1).sum(1)
    pos = torch.exp((x1 * x2).sum(1) / tau)
    pos = torch.cat([pos, pos], 0)
    return -(torch.log(pos / denom)).mean()


def multi_positive(z, groups, tau):
    """vssl's multi-positive NT-Xent over rows z with video ids `groups`."""
    s = z @ z.t() / tau
    n = z.shape[0]
    total = 0.0
    for a in range(n):
        negs = [b for b in range(n) if groups[b] != groups[a]]
        poss = [b for b in range(n) if b != a and groups[b] == groups[a]]
        neg_sum = torch.exp(s[a, negs]).sum()
        row = 0.0
        for p in poss:
            row = row + (-s[a, p] + torch.log(torch.exp(s[a, p]) + neg_sum))
        total = total + row / len(poss)
    return total / n


def gl_call(lsr, gdr, tau):
    """One global-local call: lsr [B, S, D] slices, gdr [B, S, D] dense clips."""
    sim = torch.bmm(lsr, gdr.permute(0, 2, 1))
    sim = torch.cat([sim, sim.permute(0, 2, 1)], 0).reshape(-1, lsr.shape[1]) / tau
    labels = torch.arange(lsr.shape[1]).repeat(2 * lsr.shape[0])
    return F.cross_entropy(sim, labels, reduction="sum") / (2 * lsr.shape[0])


def tclr_terms(sparse_raw, dense_raw, slices_raw):
    sp = F.normalize(sparse_raw, dim=1).view(B, V, D)
    de = F.normalize(dense_raw, dim=1).view(B, V, N, D)
    sl = F.normalize(slices_raw, dim=2).view(B, V, S, D)
    t = {}
    t["ic_sparse"] = nt_xent(sp[:, 0], sp[:, 1], TAU_TCLR)
    slots = [(v, i) for v in range(V) for i in range(N)]
    pw = 0.0
    for a in slots:
        for b in slots:
            if a != b:
                pw = pw + nt_xent(de[:, a[0], a[1]], de[:, b[0], b[1]], TAU_TCLR)
    t["ic_dense_pairwise"] = pw / 4
    groups = [r // (V * N) for r in range(B * V * N)]
    t["vssl_ic_dense_multi"] = multi_positive(de.reshape(B * V * N, D), groups, TAU_TCLR)
    t["ll_sum"] = sum(nt_xent(de[b, 0], de[b, 1], TAU_TCLR) for b in range(B))
    t["gl_code"] = sum(
        gl_call(sl[:, a], de[:, c], TAU_TCLR) for a in range(V) for c in range(V)
    )
    t["total_code"] = t["ic_sparse"] + t["ic_dense_pairwise"] + t["ll_sum"] + t["gl_code"]
    return t


def leaf(x):
    return x.clone().requires_grad_(True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/loss_parity.safetensors")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(16)
    rnd = lambda *shape: torch.randn(*shape, generator=g)
    unit = lambda *shape: F.normalize(rnd(*shape), dim=-1)
    out = {}

    # TCLR
    inputs = {
        "sparse": rnd(B * V, D),
        "dense": rnd(B * V * N, D),
        "slices": rnd(B * V, S, D),
    }
    for k, v in inputs.items():
        out[f"tclr.{k}"] = v
    for name in tclr_terms(*inputs.values()):
        ls = {k: leaf(v) for k, v in inputs.items()}
        val = tclr_terms(ls["sparse"], ls["dense"], ls["slices"])[name]
        val.backward()
        out[f"tclr.{name}"] = val.detach().reshape(1)
        for k, v in ls.items():
            out[f"tclr.{name}.grad.{k}"] = (
                v.grad if v.grad is not None else torch.zeros_like(v)
            )

    # VTDL: memory-bank logits and NCE
    K = 5
    vin = {"q": unit(4, D), "k": unit(4, D), "n": unit(4, D), "queue": unit(K, D)}
    for k, v in vin.items():
        out[f"vtdl.{k}"] = v
    ls = {k: leaf(v) for k, v in vin.items()}
    logits = torch.cat(
        [
            (ls["q"] * ls["k"]).sum(1, keepdim=True),
            ls["q"] @ ls["queue"].t(),
            (ls["q"] * ls["n"]).sum(1, keepdim=True),
        ],
        1,
    ) / TAU_VTDL
    nce = F.cross_entropy(logits, torch.zeros(4, dtype=torch.long))
    nce.backward()
    out["vtdl.logits"] = logits.detach()
    out["vtdl.nce"] = nce.detach().reshape(1)
    for k in ("q", "k", "n"):
        out[f"vtdl.nce.grad.{k}"] = ls[k].grad

    # FIFO enqueue with wrap-around: (queue size, pointer, keys)
    for case, (k_size, ptr, nkeys) in {"a": (5, 3, 4), "b": (3, 1, 4)}.items():
        queue, keys = rnd(k_size, D), rnd(nkeys, D)
        new = queue.clone()
        for i in range(nkeys):
            new[(ptr + i) % k_size] = keys[i]
        out[f"vtdl.enqueue_{case}.queue"] = queue
        out[f"vtdl.enqueue_{case}.keys"] = keys
        out[f"vtdl.enqueue_{case}.ptr"] = torch.tensor([ptr], dtype=torch.int64)
        out[f"vtdl.enqueue_{case}"] = new
        out[f"vtdl.enqueue_{case}.new_ptr"] = torch.tensor(
            [(ptr + nkeys) % k_size], dtype=torch.int64
        )

    # EMA
    m = 0.999
    tgt, src = rnd(4, 3), rnd(4, 3)
    out["vtdl.ema.target"], out["vtdl.ema.source"] = tgt, src
    out["vtdl.ema.m"] = torch.tensor([m])
    out["vtdl.ema"] = m * tgt + (1 - m) * src

    # TCA on clips [n, C, T, H, W]
    x = rnd(2, 3, 4, 2, 2)
    lam = torch.rand(2, generator=g) * 0.1
    ref = torch.tensor([1, 3], dtype=torch.int64)
    w = rnd(2, 3, 4, 2, 2)
    xl = leaf(x)
    mixed = torch.stack(
        [(1 - lam[i]) * xl[i] + lam[i] * xl[i, :, ref[i] : ref[i] + 1] for i in range(2)]
    )
    (mixed * w).sum().backward()
    out.update(
        {
            "vtdl.tca.x": x,
            "vtdl.tca.l": lam,
            "vtdl.tca.r": ref,
            "vtdl.tca.w": w,
            "vtdl.tca": mixed.detach(),
            "vtdl.tca.grad.x": xl.grad,
        }
    )

    # Heads' cross-entropy: rotation (4 classes), speed sort (3! permutations)
    for name, (rows, classes) in {"rot": (8, 4), "speed": (6, 6)}.items():
        logits = rnd(rows, classes) * 3
        targets = torch.randint(0, classes, (rows,), generator=g)
        lg = leaf(logits)
        ce = F.cross_entropy(lg, targets)
        ce.backward()
        out[f"ce.{name}.logits"] = logits
        out[f"ce.{name}.targets"] = targets
        out[f"ce.{name}"] = ce.detach().reshape(1)
        out[f"ce.{name}.grad.logits"] = lg.grad

    out = {k: v.contiguous() for k, v in out.items()}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    save_file(out, args.out, metadata={"generator": "tools/loss_parity.py"})
    print(f"wrote {args.out}: {len(out)} tensors, {os.path.getsize(args.out)} bytes")
    for k in sorted(out):
        if out[k].numel() == 1 and not k.endswith("ptr") and out[k].is_floating_point():
            print(f"  {k} = {out[k].item():.12g}")


if __name__ == "__main__":
    main()
