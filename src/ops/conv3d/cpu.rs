//! CPU kernels of [`super::conv3d`](fn@super::conv3d): blocked vol2col feeding `gemm`.
//!
//! Each entry point first hands f32 work to [`super::winograd`] or [`super::direct`]
//! where [`path`] picks one (AVX-512 present, geometry supported, not switched off
//! in [`super::algo`]); what follows is the path for everything else (f64, other
//! CPUs, other geometries).
//!
//! The im2col matrix of the whole batch is `[C·K, N·L]` (rows: channel and kernel
//! tap, columns: sample and output position). It is never built whole: every kernel
//! walks it in column blocks of a few hundred columns (a block may span samples, so
//! deep layers with tiny `L` still get wide gemms), materialising only the rows it
//! needs into a small per-task scratch buffer that stays in cache.
//!
//! - forward: parallel over column blocks, `Y[:, blk] = W · cols[:, blk]`;
//! - input gradient: with stride 1 (and padding within the kernel extent), the
//!   forward kernel applied to `dY` with the flipped, transposed kernel; otherwise
//!   parallel over channel groups, `dcols[rows(c), blk] = Wᵀ[rows(c)] · dY[:, blk]`
//!   scattered (col2vol) into those channels of `dX` only;
//! - weight gradient: parallel over row groups of `C·K`, `dW[:, rows] += dY[:, blk] ·
//!   cols[rows, blk]ᵀ` over the blocks in order.
//!
//! Every output element is written by exactly one task, with a fixed summation
//! order independent of the thread count, so results are deterministic.

use candle_core::{DType, WithDType};
use gemm::Parallelism;
use rayon::prelude::*;

use super::geometry::Geom;
use super::trim::Trim;
use super::SyncPtr;
use super::{algo, direct, pointwise, winograd};

fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// Parallel tasks the kernels split work into. A constant, not the thread count:
/// block sizes follow from the split, and with them every sum's order, so results
/// stay the same whatever the thread count.
const TASKS: usize = 8;

/// Output positions `o` in `0..out` whose input index `o·s + off - p` lies in `0..len`,
/// as a half-open range (empty ranges come back as `(lo, lo)`).
fn valid_range(out: usize, s: usize, off: usize, p: usize, len: usize) -> (usize, usize) {
    let lo = if p > off { (p - off).div_ceil(s) } else { 0 }.min(out);
    let hi = if len + p > off {
        ((len + p - off - 1) / s + 1).min(out)
    } else {
        0
    };
    (lo, hi.max(lo))
}

/// A run of consecutive columns of one output row (fixed n, t', h'): output W'
/// positions `wa..wb`, stored from column `off` of the block.
#[derive(Clone, Copy)]
struct Seg {
    n: usize,
    t: usize,
    h: usize,
    wa: usize,
    wb: usize,
    off: usize,
}

/// The segments of global columns `j0..j1` (column `j = n·L + (t'·H' + h')·W' + w'`).
fn segments(g: &Geom, j0: usize, j1: usize, out: &mut Vec<Seg>) {
    out.clear();
    let [_, oh, ow] = g.out;
    let l = g.l();
    let mut j = j0;
    while j < j1 {
        let (n, rem) = (j / l, j % l);
        let (t, h, w) = (rem / (oh * ow), (rem / ow) % oh, rem % ow);
        let wb = ow.min(w + (j1 - j));
        out.push(Seg {
            n,
            t,
            h,
            wa: w,
            wb,
            off: j - j0,
        });
        j += wb - w;
    }
}

/// Walks rows `r0..r1` of the im2col matrix over `segs`: for each (row, segment)
/// calls `f(dst_offset, src, (lo, hi), w_in0)` where `dst_offset` is the block
/// element of the segment's first column, `src` the input offset of the (n, c, t, h)
/// input row or `None` when it lies in padding, `lo..hi` the segment's output W'
/// positions that read inside the input (clamped to the segment) and `w_in0` the
/// input W index read by output position `lo`.
#[inline(always)]
fn walk(
    g: &Geom,
    r0: usize,
    r1: usize,
    segs: &[Seg],
    nb: usize,
    mut f: impl FnMut(usize, Option<usize>, (usize, usize), usize, &Seg),
) {
    let [it, ih, iw] = g.inp;
    let [s0, s1, s2] = g.stride;
    let [p0, p1, p2] = g.pad;
    let [d0, d1, d2] = g.dil;
    let [_, k1, k2] = g.k;
    let kvol = g.kvol();
    for r in r0..r1 {
        let (c, k) = (r / kvol, r % kvol);
        let (a, b, e) = (k / (k1 * k2), (k / k2) % k1, k % k2);
        let (w_lo, w_hi) = valid_range(g.out[2], s2, e * d2, p2, iw);
        let row = (r - r0) * nb;
        for sg in segs {
            let ti = (sg.t * s0 + a * d0).wrapping_sub(p0);
            let hi = (sg.h * s1 + b * d1).wrapping_sub(p1);
            let src = (ti < it && hi < ih).then(|| (((sg.n * g.c + c) * it + ti) * ih + hi) * iw);
            let lo = w_lo.max(sg.wa).min(sg.wb);
            let hi_w = w_hi.min(sg.wb).max(lo);
            let w_in0 = (lo * s2 + e * d2).wrapping_sub(p2);
            f(row + sg.off, src, (lo, hi_w), w_in0, sg);
        }
    }
}

/// Rows `r0..r1` of the im2col block over `segs` into `dst` (`[r1-r0, nb]`).
fn vol2col<T: WithDType>(
    g: &Geom,
    x: &[T],
    r0: usize,
    r1: usize,
    segs: &[Seg],
    nb: usize,
    dst: &mut [T],
) {
    let zero = T::zero();
    let s = g.stride[2];
    walk(g, r0, r1, segs, nb, |off, src, (lo, hi), w0, sg| {
        let d = &mut dst[off..off + sg.wb - sg.wa];
        let Some(src) = src else {
            d.fill(zero);
            return;
        };
        let (lo, hi) = (lo - sg.wa, hi - sg.wa);
        d[..lo].fill(zero);
        d[hi..].fill(zero);
        if hi > lo {
            let x = &x[src + w0..];
            if s == 1 {
                d[lo..hi].copy_from_slice(&x[..hi - lo]);
            } else {
                for (d, v) in d[lo..hi].iter_mut().zip(x.iter().step_by(s)) {
                    *d = *v;
                }
            }
        }
    });
}

/// Scatter-adds rows `r0..r1` of an im2col block (`[r1-r0, nb]`) into `dx`
/// (through a pointer: callers guarantee no other task touches these channels).
///
/// # Safety
/// `dx` must point to the whole `[N, C, T, H, W]` gradient and no other thread may
/// access the channels of rows `r0..r1` meanwhile.
unsafe fn col2vol<T: WithDType>(
    g: &Geom,
    src: &[T],
    r0: usize,
    r1: usize,
    segs: &[Seg],
    nb: usize,
    dx: SyncPtr<T>,
) {
    let s = g.stride[2];
    walk(g, r0, r1, segs, nb, |off, row, (lo, hi), w0, sg| {
        let Some(row) = row else { return };
        if hi <= lo {
            return;
        }
        let col = &src[off + lo - sg.wa..off + hi - sg.wa];
        let base = dx.get().add(row + w0);
        for (i, v) in col.iter().enumerate() {
            let p = base.add(i * s);
            *p += *v;
        }
    });
}

/// `dst = (acc ? dst : 0) + lhs · rhs` for an `m×n` result with raw strides
/// (row stride, column stride) for each operand.
///
/// # Safety
/// Every addressed element must be in bounds and `dst` must not alias `lhs`/`rhs`
/// nor be written by another thread.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_raw<T: WithDType>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    drs: usize,
    lhs: *const T,
    (lrs, lcs): (usize, usize),
    rhs: *const T,
    (rrs, rcs): (usize, usize),
    acc: bool,
    par: Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        drs as isize,
        acc,
        lhs,
        lcs as isize,
        lrs as isize,
        rhs,
        rcs as isize,
        rrs as isize,
        T::from_f64(if acc { 1.0 } else { 0.0 }),
        T::one(),
        false,
        false,
        false,
        par,
    )
}

/// Columns per block so that `rows × nb` elements (the scratch block) stay near
/// `budget` elements, a multiple of 16 within 32..=1024.
fn block_cols(rows: usize, budget: usize) -> usize {
    ((budget / rows.max(1)) / 16 * 16).clamp(32, 1024)
}

/// If all segments lie in one sample, that sample and the block's first `l` offset.
fn single_sample(g: &Geom, j0: usize, j1: usize) -> Option<(usize, usize)> {
    let l = g.l();
    (j0 / l == (j1 - 1) / l).then_some((j0 / l, j0 % l))
}

/// Gathers `m` rows of `[N, m, L]` data (`y`) for global columns `j0..j1` into
/// `dst` (`[m, nb]`).
fn gather_rows<T: WithDType>(y: &[T], m: usize, l: usize, j0: usize, j1: usize, dst: &mut Vec<T>) {
    let nb = j1 - j0;
    dst.resize(m * nb, T::zero());
    let mut j = j0;
    while j < j1 {
        let (n, lj) = (j / l, j % l);
        let len = (l - lj).min(j1 - j);
        for r in 0..m {
            let s = &y[(n * m + r) * l + lj..][..len];
            dst[r * nb + (j - j0)..][..len].copy_from_slice(s);
        }
        j += len;
    }
}

/// The three passes of a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pass {
    Forward,
    InputGrad,
    WeightGrad,
}

/// The f32 kernel that computes `pass` of `g`: one place decides, the dispatch below
/// and the profile's labels both ask it.
pub(super) fn path(g: &Geom, pass: Pass, f32: bool) -> &'static str {
    if pass != Pass::Forward {
        if let Some(t) = Trim::of(g) {
            return match path(&t.g, pass, f32) {
                "winograd" => "winograd (trimmed)",
                "direct" => "direct (trimmed)",
                "pointwise" => "pointwise (trimmed)",
                _ => "blocked (trimmed)",
            };
        }
    }
    let portable = if pointwise::applies(g) {
        "pointwise"
    } else {
        "blocked"
    };
    if !f32 {
        return portable;
    }
    let (wino, direct) = match pass {
        Pass::Forward => (
            algo::winograd(g),
            direct::applies(g) && algo::direct_forward(g),
        ),
        Pass::InputGrad => (algo::winograd_input(g), direct::applies_input_grad(g)),
        // The direct weight gradient of a 1x1x1 layer ran at 23-41 GFLOP/s (MC3-18's
        // layer-2 shortcut), the pointwise gemm at 2-3x that.
        Pass::WeightGrad => (
            algo::winograd_weight(g),
            direct::applies_weight(g) && !pointwise::applies(g),
        ),
    };
    if wino {
        "winograd"
    } else if direct {
        "direct"
    } else {
        portable
    }
}

/// The AVX-512 kernel [`path`] picks for `pass` of `g` when `T` is f32, else `None`
/// (the blocked path follows in the caller).
fn fast<T: WithDType>(g: &Geom, a: &[T], b: &[T], pass: Pass) -> Option<Vec<T>> {
    let kernel = path(g, pass, T::DTYPE == DType::F32);
    if kernel == "blocked" || kernel == "pointwise" {
        return None;
    }
    // SAFETY: only f32 reaches here (`path` says blocked otherwise), so the casts are
    // identities.
    unsafe {
        let (a, b) = (as_f32(a), as_f32(b));
        Some(from_f32(match (kernel, pass) {
            ("winograd", Pass::Forward) => winograd::fwd(g, a, b),
            ("winograd", Pass::InputGrad) => winograd::bwd_input(g, a, b),
            ("winograd", Pass::WeightGrad) => winograd::bwd_weight(g, a, b),
            (_, Pass::Forward) => direct::fwd(g, a, b),
            (_, Pass::InputGrad) => direct::bwd_input(g, a, b),
            (_, Pass::WeightGrad) => direct::bwd_weight(g, a, b),
        }))
    }
}

/// `s` as f32.
///
/// # Safety
/// `T` must be f32.
unsafe fn as_f32<T>(s: &[T]) -> &[f32] {
    std::slice::from_raw_parts(s.as_ptr() as *const f32, s.len())
}

/// `v` as a `Vec<T>`.
///
/// # Safety
/// `T` must be f32.
unsafe fn from_f32<T>(v: Vec<f32>) -> Vec<T> {
    let mut v = std::mem::ManuallyDrop::new(v);
    Vec::from_raw_parts(v.as_mut_ptr() as *mut T, v.len(), v.capacity())
}

/// y = W · cols(x), `[N, O, L]`.
pub(super) fn fwd<T: WithDType>(g: &Geom, x: &[T], w: &[T]) -> Vec<T> {
    if let Some(y) = fast(g, x, w, Pass::Forward) {
        return y;
    }
    if pointwise::applies(g) {
        return pointwise::fwd(g, x, w);
    }
    let (ck, l, o) = (g.ck(), g.l(), g.o);
    let total = g.n * l;
    let mut y = vec![T::zero(); g.n * o * l];
    let nb = block_cols(ck, 96 * 1024);
    let blocks = total.div_ceil(nb);
    // Few blocks (deep layers): one block at a time with a parallel gemm.
    let few = blocks < TASKS / 2;
    let par = if few {
        Parallelism::Rayon(threads())
    } else {
        Parallelism::None
    };
    let yp = SyncPtr(y.as_mut_ptr());
    let run = |(segs, cols, out): &mut (Vec<Seg>, Vec<T>, Vec<T>), b: usize| {
        let (j0, j1) = (b * nb, ((b + 1) * nb).min(total));
        let nbb = j1 - j0;
        segments(g, j0, j1, segs);
        cols.resize(ck * nbb, T::zero());
        vol2col(g, x, 0, ck, segs, nbb, cols);
        // SAFETY: block `b` writes only columns j0..j1 of y, disjoint between blocks;
        // all offsets are inside y / w / cols by construction.
        unsafe {
            if let Some((n, l0)) = single_sample(g, j0, j1) {
                let dst = yp.get().add(n * o * l + l0);
                gemm_raw(
                    (o, nbb, ck),
                    dst,
                    l,
                    w.as_ptr(),
                    (ck, 1),
                    cols.as_ptr(),
                    (nbb, 1),
                    false,
                    par,
                );
            } else {
                out.resize(o * nbb, T::zero());
                gemm_raw(
                    (o, nbb, ck),
                    out.as_mut_ptr(),
                    nbb,
                    w.as_ptr(),
                    (ck, 1),
                    cols.as_ptr(),
                    (nbb, 1),
                    false,
                    par,
                );
                let mut j = j0;
                while j < j1 {
                    let (n, lj) = (j / l, j % l);
                    let len = (l - lj).min(j1 - j);
                    for r in 0..o {
                        let s = &out[r * nbb + (j - j0)..][..len];
                        std::ptr::copy_nonoverlapping(
                            s.as_ptr(),
                            yp.get().add((n * o + r) * l + lj),
                            len,
                        );
                    }
                    j += len;
                }
            }
        }
    };
    if few {
        let mut st = Default::default();
        (0..blocks).for_each(|b| run(&mut st, b));
    } else {
        (0..blocks)
            .into_par_iter()
            .for_each_init(Default::default, run);
    }
    y
}

/// Splits `0..len` into about `parts` contiguous ranges, each a multiple of `unit`.
fn split(len: usize, unit: usize, parts: usize) -> Vec<(usize, usize)> {
    let units = len / unit;
    let parts = parts.clamp(1, units.max(1));
    (0..parts)
        .map(|i| (i * units / parts * unit, (i + 1) * units / parts * unit))
        .filter(|(a, b)| b > a)
        .collect()
}

/// dx, `[N, C, T, H, W]`. Stride 1 with padding at most the dilated kernel extent
/// is a forward convolution of `dy` with the flipped, transposed kernel (a long-K
/// gemm, no scatter); anything else takes [`bwd_input_col2vol`].
pub(super) fn bwd_input<T: WithDType>(g: &Geom, dy: &[T], w: &[T]) -> Vec<T> {
    // Taps that read only padding contribute nothing: run on the live ones' weights.
    if let Some(t) = Trim::of(g) {
        return bwd_input(&t.g, dy, &t.weight(g, w));
    }
    if let Some(dx) = fast(g, dy, w, Pass::InputGrad) {
        return dx;
    }
    if pointwise::applies(g) {
        return pointwise::bwd_input(g, dy, w);
    }
    let as_forward = g.stride == [1; 3] && (0..3).all(|a| g.pad[a] <= g.dil[a] * (g.k[a] - 1));
    if !as_forward {
        return bwd_input_col2vol(g, dy, w);
    }
    let gt = Geom {
        n: g.n,
        c: g.o,
        o: g.c,
        inp: g.out,
        k: g.k,
        out: g.inp,
        stride: [1; 3],
        pad: [0, 1, 2].map(|a| g.dil[a] * (g.k[a] - 1) - g.pad[a]),
        dil: g.dil,
    };
    let (kvol, [k0, k1, k2]) = (g.kvol(), g.k);
    // wt[c, o, a, b, e] = w[o, c, k0-1-a, k1-1-b, k2-1-e]
    let mut wt = vec![T::zero(); w.len()];
    for o in 0..g.o {
        for c in 0..g.c {
            let src = &w[(o * g.c + c) * kvol..][..kvol];
            let dst = &mut wt[(c * g.o + o) * kvol..][..kvol];
            for (i, d) in dst.iter_mut().enumerate() {
                let (a, b, e) = (i / (k1 * k2), (i / k2) % k1, i % k2);
                *d = src[((k0 - 1 - a) * k1 + (k1 - 1 - b)) * k2 + (k2 - 1 - e)];
            }
        }
    }
    fwd(&gt, dy, &wt)
}

/// dx = col2vol(Wᵀ · dy), `[N, C, T, H, W]`; parallel over channel groups.
fn bwd_input_col2vol<T: WithDType>(g: &Geom, dy: &[T], w: &[T]) -> Vec<T> {
    let (ck, l, o, kvol) = (g.ck(), g.l(), g.o, g.kvol());
    let total = g.n * l;
    let mut dx = vec![T::zero(); g.n * g.c * g.lin()];
    let groups = split(ck, kvol, TASKS);
    let dxp = SyncPtr(dx.as_mut_ptr());
    groups.par_iter().for_each(|&(r0, r1)| {
        let rows = r1 - r0;
        let nb = block_cols(rows + o, 128 * 1024);
        let (mut segs, mut dcols, mut dyb) = (Vec::new(), Vec::new(), Vec::new());
        let mut j0 = 0;
        while j0 < total {
            let j1 = (j0 + nb).min(total);
            let nbb = j1 - j0;
            segments(g, j0, j1, &mut segs);
            dcols.resize(rows * nbb, T::zero());
            // Wᵀ rows r0..r1: element (r, o) at w[o·CK + r].
            // SAFETY: in-bounds strided reads; dcols is this task's own buffer.
            unsafe {
                let lhs = w.as_ptr().add(r0);
                if let Some((n, l0)) = single_sample(g, j0, j1) {
                    let rhs = dy.as_ptr().add(n * o * l + l0);
                    gemm_raw(
                        (rows, nbb, o),
                        dcols.as_mut_ptr(),
                        nbb,
                        lhs,
                        (1, ck),
                        rhs,
                        (l, 1),
                        false,
                        Parallelism::None,
                    );
                } else {
                    gather_rows(dy, o, l, j0, j1, &mut dyb);
                    gemm_raw(
                        (rows, nbb, o),
                        dcols.as_mut_ptr(),
                        nbb,
                        lhs,
                        (1, ck),
                        dyb.as_ptr(),
                        (nbb, 1),
                        false,
                        Parallelism::None,
                    );
                }
                // SAFETY: rows r0..r1 are whole channels owned by this group only.
                col2vol(g, &dcols, r0, r1, &segs, nbb, dxp);
            }
            j0 = j1;
        }
    });
    dx
}

/// dW = Σ_blocks dY[:, blk] · cols[:, blk]ᵀ, `[O, C·K]`; parallel over row groups of
/// `C·K`, blocks summed in column order.
pub(super) fn bwd_weight<T: WithDType>(g: &Geom, x: &[T], dy: &[T]) -> Vec<T> {
    // Dead taps' weight gradients are zero: compute the live ones' only.
    if let Some(t) = Trim::of(g) {
        return t.widen(g, &bwd_weight(&t.g, x, dy));
    }
    if let Some(dw) = fast(g, x, dy, Pass::WeightGrad) {
        return dw;
    }
    if pointwise::applies(g) {
        return pointwise::bwd_weight(g, x, dy);
    }
    let (ck, l, o) = (g.ck(), g.l(), g.o);
    let total = g.n * l;
    let mut dw = vec![T::zero(); o * ck];
    let groups = split(ck, 1, TASKS);
    let dwp = SyncPtr(dw.as_mut_ptr());
    groups.par_iter().for_each(|&(r0, r1)| {
        let rows = r1 - r0;
        let nb = block_cols(rows + o, 192 * 1024);
        let (mut segs, mut cols, mut dyb) = (Vec::new(), Vec::new(), Vec::new());
        let mut j0 = 0;
        while j0 < total {
            let j1 = (j0 + nb).min(total);
            let nbb = j1 - j0;
            segments(g, j0, j1, &mut segs);
            cols.resize(rows * nbb, T::zero());
            vol2col(g, x, r0, r1, &segs, nbb, &mut cols);
            // colsᵀ as rhs: element (j, r) at cols[r·nbb + j].
            // SAFETY: this group alone writes columns r0..r1 of dW; reads in bounds.
            unsafe {
                let dst = dwp.get().add(r0);
                if let Some((n, l0)) = single_sample(g, j0, j1) {
                    let lhs = dy.as_ptr().add(n * o * l + l0);
                    gemm_raw(
                        (o, rows, nbb),
                        dst,
                        ck,
                        lhs,
                        (l, 1),
                        cols.as_ptr(),
                        (1, nbb),
                        j0 > 0,
                        Parallelism::None,
                    );
                } else {
                    gather_rows(dy, o, l, j0, j1, &mut dyb);
                    gemm_raw(
                        (o, rows, nbb),
                        dst,
                        ck,
                        dyb.as_ptr(),
                        (nbb, 1),
                        cols.as_ptr(),
                        (1, nbb),
                        j0 > 0,
                        Parallelism::None,
                    );
                }
            }
            j0 = j1;
        }
    });
    dw
}
