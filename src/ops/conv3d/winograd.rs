//! Winograd F(2x2x2, 3x3x3) and F(2x2, 3x3) conv3d on AVX-512: forward, input
//! gradient and weight gradient of 3x3x3 stride-1 convolutions (padding 0, 1 or 2 per
//! axis) and of 1x3x3 stride-1 ones (MC3-18's layers 2-4, R(2+1)D's spatial halves:
//! one-frame tiles, 16 points per 2x2 outputs instead of 36 multiplies).
//!
//! Why it exists: nearly every convolution of R3D-18, MC3-18 and C3D is 3x3x3 at
//! stride 1, and the direct kernels already run those near this machine's FMA peak.
//! Winograd's minimal filtering computes a 2x2x2 output tile from a 4x4x4 input tile
//! with 64 multiplies per input/output channel pair instead of 216, so the remaining
//! speed-up is arithmetic. The input gradient of such a layer is again one (with the
//! kernel flipped and transposed, padding `2 - p`); the weight gradient is the same
//! 64-point product reduced over tiles instead of channels.
//!
//! Layout. The input is copied once to zero-padded channels-last, `[N, Tp, Hp, Wp,
//! Cp]` (`Cp` = channels rounded up to 16), so that one tap of 16 channels is one
//! vector load. Work goes in blocks of `NB` consecutive 2x2x2 tiles (order n, t, h,
//! w); per block, `V[ξ][tile][c] = (Bᵀ d B)` for the 64 points ξ, then 64 small
//! gemms `M[ξ] = V[ξ] · U[ξ]` with the transformed weight `U[ξ][c][o] = (G g Gᵀ)`,
//! then `y = Aᵀ M A` scattered to NCTHW. Every block's scratch stays in L2. Deep
//! layers (256 channels and more, where one pass over `U` costs more than a block's
//! products) instead run point-major: all tiles transformed first, then one gemm per
//! point over all tiles, so each point's `U` (or, for the weight gradient, `dU`) is
//! read once and stays in L2.
//!
//! Determinism: each output element of the forward and input gradient comes from one
//! block with a fixed order of operations; the weight gradient sums blocks in order
//! within a fixed-size chunk and chunks in order (point-major: all tiles in order per
//! point), so results do not depend on the thread count.
//!
//! Accuracy: the F(2,3) transforms have coefficients 0, ±1 and ±1/2 only; the
//! relative error against an f64 reference is of the order of the direct kernel's
//! (`experiments/perf-cpu.md` lists the measured bound; tests assert it).
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_variables))]
// Index loops over the transforms' small arrays keep the (t, h, w) shape visible.
#![allow(clippy::needless_range_loop)]

use rayon::prelude::*;

use super::geometry::Geom;
use super::{scratch, SyncPtr};

/// Transformed points of a 4x4x4 tile (3x3x3 kernels).
const PTS: usize = 64;
/// Transformed points of a 1x4x4 tile (1x3x3 kernels).
const PTS2: usize = 16;
/// Tiles per block (a multiple of the gemm's register rows `R`).
const NB: usize = 48;
/// Tiles per gemm register tile.
const R: usize = 6;
/// Extra floats between the points of a transformed block: a point's rows would
/// otherwise lie a multiple of 4 KiB apart and 64 of them share one L1 set.
const SKEW: usize = 16;

/// Whether the Winograd kernels can compute `g`: stride 1, dilation 1, a 3x3x3
/// kernel with padding at most 2 on every axis, or a 1x3x3 kernel (MC3-18's layers
/// 2-4, the spatial half of R(2+1)D) without temporal padding and at most 2 on the
/// other axes.
pub(super) fn fits(g: &Geom) -> bool {
    let spatial = g.pad[1] <= 2 && g.pad[2] <= 2;
    let kernel = match g.k {
        [3, 3, 3] => g.pad[0] <= 2,
        [1, 3, 3] => g.pad[0] == 0,
        _ => false,
    };
    kernel && spatial && g.stride == [1; 3] && g.dil == [1; 3]
}

/// One problem in the core's terms: `c` input channels on `inp`, `o` outputs on
/// `out`, padding `pad` (so `out = inp + 2·pad - 2` on the 3-tap axes).
///
/// With `t3` the kernel is 3x3x3 and the tiles F(2x2x2, 3x3x3); without, it is 1x3x3
/// and the tiles F(1x2x2, 1x3x3) = F(2x2, 3x3) per frame: the time axis has one-frame
/// tiles and an identity transform, 16 points per tile.
#[derive(Clone, Copy)]
struct Prob {
    n: usize,
    c: usize,
    o: usize,
    inp: [usize; 3],
    out: [usize; 3],
    pad: [usize; 3],
    t3: bool,
}

impl Prob {
    /// `g` itself (forward and weight gradient).
    fn of(g: &Geom) -> Self {
        Self {
            n: g.n,
            c: g.c,
            o: g.o,
            inp: g.inp,
            out: g.out,
            pad: g.pad,
            t3: g.k[0] == 3,
        }
    }
    /// Outputs per tile and axis.
    fn m(&self) -> [usize; 3] {
        [if self.t3 { 2 } else { 1 }, 2, 2]
    }
    /// Transformed points per tile.
    fn pts(&self) -> usize {
        if self.t3 {
            PTS
        } else {
            PTS2
        }
    }
    /// Kernel taps.
    fn taps(&self) -> usize {
        if self.t3 {
            27
        } else {
            9
        }
    }
    /// Tiles per axis.
    fn tiles(&self) -> [usize; 3] {
        let m = self.m();
        std::array::from_fn(|a| self.out[a].div_ceil(m[a]))
    }
    fn total_tiles(&self) -> usize {
        self.n * self.tiles().iter().product::<usize>()
    }
    /// The tiles' output grid per axis (the output rounded up to whole tiles).
    fn even(&self) -> [usize; 3] {
        let (t, m) = (self.tiles(), self.m());
        std::array::from_fn(|a| t[a] * m[a])
    }
    /// Padded channels-last extent per axis: every tile's window (4 wide on a 3-tap
    /// axis, 1 on the time axis of a 1x3x3 kernel) fits.
    fn padded(&self) -> [usize; 3] {
        let e = self.even();
        [e[0] + if self.t3 { 2 } else { 0 }, e[1] + 2, e[2] + 2]
    }
    fn cp(&self) -> usize {
        self.c.div_ceil(16) * 16
    }
    fn op(&self) -> usize {
        self.o.div_ceil(16) * 16
    }
    /// The block layouts of the transformed input (`Cp` wide) and of the products or
    /// transformed gradient (`Op` wide).
    fn lays(&self) -> (Lay, Lay) {
        let pts = self.pts();
        let lay = |w| Lay {
            w,
            pts,
            rs: row_stride(w),
        };
        (lay(self.cp()), lay(self.op()))
    }
    /// Floats between the transformed weight's rows (`Op` wide).
    fn us(&self) -> usize {
        row_stride(self.op())
    }
}

/// The stride of rows `w` floats wide in the transformed blocks and weight: `w`, or
/// 16 more from 256 up, where rows a multiple of 1 KiB apart would pile the gemms'
/// register-tile rows onto a few L1 sets (512-channel layers ran at a third of the
/// FMA peak).
fn row_stride(w: usize) -> usize {
    if w >= 256 {
        w + 16
    } else {
        w
    }
}

/// `y = conv(x, w)`, `[N, O, T', H', W']`, for a geometry where [`fits`] holds.
pub(super) fn fwd(g: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
    let p = Prob::of(g);
    let kk = p.taps();
    // Weight (o, c, k) at (o·C + c)·kk + k.
    let u = transform_weight(&p, |o, c| &w[(o * g.c + c) * kk..][..kk], false);
    conv(&p, x, &u)
}

/// `dx`, `[N, C, T, H, W]`: the convolution of `dY` with the kernel flipped and
/// transposed, padding `2 - p`.
pub(super) fn bwd_input(g: &Geom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let t3 = g.k[0] == 3;
    let p = Prob {
        n: g.n,
        c: g.o,
        o: g.c,
        inp: g.out,
        out: g.inp,
        // A 1-tap time axis has no padding either way.
        pad: [
            if t3 { 2 - g.pad[0] } else { 0 },
            2 - g.pad[1],
            2 - g.pad[2],
        ],
        t3,
    };
    let kk = p.taps();
    // Output channel `c` of dx reads input channel `o` of dY through w[o, c, flipped].
    let u = transform_weight(&p, |c, o| &w[(o * g.c + c) * kk..][..kk], true);
    conv(&p, dy, &u)
}

/// `U[ξ][c][o] = (G g_{o,c} Gᵀ)[ξ]`, `[pts, C, Op]` for `p`'s `c` and `o` (columns
/// past `o` zero); `g_of(o, c)` gives the taps in (t, h, w) order, read flipped when
/// `flip`. Sixteen output channels at a time, one lane each, so the transform
/// vectorises and each point's row of 16 is one contiguous store (it was a fifth of a
/// 256-channel layer's time as scalar code with scattered stores).
fn transform_weight<'a>(
    p: &Prob,
    g_of: impl Fn(usize, usize) -> &'a [f32] + Sync,
    flip: bool,
) -> Vec<f32> {
    let len = p.pts() * p.c * p.us();
    let mut u: Vec<f32> = Vec::with_capacity(len);
    let up = SyncPtr(u.as_mut_ptr());
    // SAFETY: row `ci` of every point is this task's only.
    (0..p.c)
        .into_par_iter()
        .for_each(|ci| unsafe { weight_rows(p, ci, &g_of, flip, up) });
    // SAFETY: every element was written (all `op / L` lane groups of all `c` rows of
    // every point, and the stride's tails).
    unsafe { u.set_len(len) };
    u
}

/// Row `ci` of every point of [`transform_weight`]'s `U` at `up`. (Compiled for
/// AVX-512 it measured no faster: its cost is the gather of each lane's taps.)
///
/// # Safety
/// Row `ci` of every point is the caller's only.
unsafe fn weight_rows<'a>(
    p: &Prob,
    ci: usize,
    g_of: &impl Fn(usize, usize) -> &'a [f32],
    flip: bool,
    up: SyncPtr<f32>,
) {
    let (c, o, kk, t3) = (p.c, p.o, p.taps(), p.t3);
    let (op, us) = (p.op(), p.us());
    let row = |xi: usize| up.get().add((xi * c + ci) * us);
    // Lanes past `o` stay zero; full groups overwrite every lane they use.
    let mut taps = [[0f64; L]; 27];
    for o0 in (0..op).step_by(L) {
        if o0 + L > o {
            taps = [[0f64; L]; 27];
        }
        for (l, oi) in (o0..o.min(o0 + L)).enumerate() {
            let src = g_of(oi, ci);
            for (k, t) in taps[..kk].iter_mut().enumerate() {
                t[l] = src[if flip { kk - 1 - k } else { k }] as f64;
            }
        }
        // SAFETY: row `ci` of every point is this call's.
        let store = |xi: usize, v: &[f32; L]| unsafe {
            std::ptr::copy_nonoverlapping(v.as_ptr(), row(xi).add(o0), L)
        };
        if t3 {
            weight_tile(&taps)
                .iter()
                .enumerate()
                .for_each(|(xi, v)| store(xi, v));
        } else {
            weight_tile_2d(&taps)
                .iter()
                .enumerate()
                .for_each(|(xi, v)| store(xi, v));
        }
    }
    for xi in 0..p.pts() {
        std::ptr::write_bytes(row(xi).add(op), 0, us - op);
    }
}

/// Lanes of the weight transforms: 16 output channels.
const L: usize = 16;

/// `[v0, (v0 + v1 + v2)/2, (v0 - v1 + v2)/2, v2]` lane by lane: `G` on one axis.
#[inline(always)]
fn g_row(v: [&[f64; L]; 3]) -> [[f64; L]; 4] {
    let mut r = [[0f64; L]; 4];
    for l in 0..L {
        let (a, b, c) = (v[0][l], v[1][l], v[2][l]);
        r[0][l] = a;
        r[1][l] = 0.5 * (a + b + c);
        r[2][l] = 0.5 * (a - b + c);
        r[3][l] = c;
    }
    r
}

/// `G g Gᵀ` along all three axes of 16 3x3x3 kernels, one per lane (in f64, rounded
/// once).
#[inline(always)]
fn weight_tile(g: &[[f64; L]; 27]) -> [[f32; L]; PTS] {
    // G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]].
    let mut a = [[[[0f64; L]; 4]; 3]; 3]; // [i][j][e]
    for i in 0..3 {
        for j in 0..3 {
            let b = (i * 3 + j) * 3;
            a[i][j] = g_row([&g[b], &g[b + 1], &g[b + 2]]);
        }
    }
    let mut b = [[[[0f64; L]; 4]; 4]; 3]; // [i][bb][e]
    for i in 0..3 {
        for e in 0..4 {
            let r = g_row([&a[i][0][e], &a[i][1][e], &a[i][2][e]]);
            for bb in 0..4 {
                b[i][bb][e] = r[bb];
            }
        }
    }
    let mut out = [[0f32; L]; PTS];
    for bb in 0..4 {
        for e in 0..4 {
            let r = g_row([&b[0][bb][e], &b[1][bb][e], &b[2][bb][e]]);
            for aa in 0..4 {
                for l in 0..L {
                    out[(aa * 4 + bb) * 4 + e][l] = r[aa][l] as f32;
                }
            }
        }
    }
    out
}

/// `G g Gᵀ` along H and W of 16 1x3x3 kernels (the first 9 of `g`), one per lane.
#[inline(always)]
fn weight_tile_2d(g: &[[f64; L]; 27]) -> [[f32; L]; PTS2] {
    let mut a = [[[0f64; L]; 4]; 3]; // [j][e]
    for j in 0..3 {
        a[j] = g_row([&g[j * 3], &g[j * 3 + 1], &g[j * 3 + 2]]);
    }
    let mut out = [[0f32; L]; PTS2];
    for e in 0..4 {
        let r = g_row([&a[0][e], &a[1][e], &a[2][e]]);
        for bb in 0..4 {
            for l in 0..L {
                out[bb * 4 + e][l] = r[bb][l] as f32;
            }
        }
    }
    out
}

/// `x` (`[N, C, T, H, W]`) zero-padded by `pad` (and up to the tiles' extent) in
/// channels-last order, `[N, Tp, Hp, Wp, Cp]`; every element written once.
fn channels_last(p: &Prob, x: &[f32], dst: &mut Vec<f32>) {
    let [t, h, w] = p.inp;
    let [tp, hp, wp] = p.padded();
    let [pt, ph, pw] = p.pad;
    let (c, cp) = (p.c, p.cp());
    let slab = hp * wp * cp;
    scratch(dst, p.n * tp * slab)
        .par_chunks_mut(slab)
        .enumerate()
        .for_each(|(s, d)| {
            let (ni, tpi) = (s / tp, s % tp);
            let Some(ti) = tpi.checked_sub(pt).filter(|&ti| ti < t) else {
                d.fill(0.0);
                return;
            };
            for (hpi, row) in d.chunks_mut(wp * cp).enumerate() {
                let Some(hi) = hpi.checked_sub(ph).filter(|&hi| hi < h) else {
                    row.fill(0.0);
                    continue;
                };
                row[..pw * cp].fill(0.0);
                row[(pw + w) * cp..].fill(0.0);
                let inner = &mut row[pw * cp..(pw + w) * cp];
                // Channel ci's row of this (t, h): x[((ni·C + ci)·T + ti)·H + hi][..W].
                let src = &x[((ni * c * t + ti) * h + hi) * w..];
                // SAFETY: AVX-512F is checked by the caller; reads stay inside `x`'s
                // rows of channels < C, writes inside `inner`.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    avx512::transpose_row(src, t * h * w, (c, cp, w), inner)
                }
            }
        });
}

/// The tile's base offset in the channels-last input and its output origin.
fn tile_at(p: &Prob, tile: usize) -> (usize, usize, [usize; 3]) {
    let [tt, th, tw] = p.tiles();
    let [tp, hp, wp] = p.padded();
    let per = tt * th * tw;
    let (ni, r) = (tile / per, tile % per);
    let o = [
        p.m()[0] * (r / (th * tw)),
        2 * ((r / tw) % th),
        2 * (r % tw),
    ];
    let base = (((ni * tp + o[0]) * hp + o[1]) * wp + o[2]) * p.cp();
    (ni, base, o)
}

/// Where a transformed block keeps its values: rows (tiles) in groups of `R`, each
/// group holding the points (64 or 16) one after another, each point `R` rows of `w`
/// floats (`Cp` or `Op`) plus a skew. The gemm reads one group's point contiguously
/// and the points of one tile lie 25 cache lines apart (at 64 channels), on distinct
/// L1 sets and few pages.
#[derive(Clone, Copy)]
struct Lay {
    /// Floats per row.
    w: usize,
    /// Points per tile.
    pts: usize,
    /// Floats between rows (`w` or a little more, [`row_stride`]).
    rs: usize,
}

impl Lay {
    /// Floats between points of a group.
    fn ps(self) -> usize {
        R * self.rs + SKEW
    }
    /// Floats between groups.
    fn gs(self) -> usize {
        self.pts * self.ps()
    }
    /// Offset of row `j`, point `xi`.
    fn at(self, j: usize, xi: usize) -> usize {
        (j / R) * self.gs() + xi * self.ps() + (j % R) * self.rs
    }
    /// Floats for `rows` rows (a multiple of `R`).
    fn len(self, rows: usize) -> usize {
        rows / R * self.gs()
    }
}

/// The core: `y[n, o, ·] = Σ_c conv(x[n, c], w[o, c])` with transformed weights `u`.
fn conv(p: &Prob, x: &[f32], u: &[f32]) -> Vec<f32> {
    let mut xcl = XCL.with(|s| std::mem::take(&mut *s.borrow_mut()));
    channels_last(p, x, &mut xcl);
    let total = p.total_tiles();
    let nb = block_tiles(p);
    let blocks = total.div_ceil(nb);
    // Outputs first go channels-last on the tiles' even grid (8 vector stores per
    // tile and 16 channels), then one transposing pass writes NCTHW.
    let mut ycl = YCL.with(|s| std::mem::take(&mut *s.borrow_mut()));
    let even: usize = p.even().iter().product();
    let ycp = SyncPtr(scratch(&mut ycl, p.n * even * p.op()).as_mut_ptr());
    let xcl_ref = &xcl[..];
    if let Some(chunk) = whole_chunk(p) {
        whole_products(p, xcl_ref, u, chunk, ycp);
    } else {
        (0..blocks).into_par_iter().for_each(|b| {
            BLOCK.with(|s| {
                let (v, m) = &mut *s.borrow_mut();
                let t0 = b * nb;
                let nt = nb.min(total - t0);
                let rows = nt.div_ceil(R) * R;
                let (lv, lm) = p.lays();
                scratch(v, lv.len(rows));
                scratch(m, lm.len(rows));
                // SAFETY: AVX-512F is checked by the caller (`super::cpu`); the block's
                // output tiles belong to this task only.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    avx512::transform_block::<false>(
                        p,
                        xcl_ref,
                        (t0, nt, rows),
                        lv,
                        v.as_mut_ptr(),
                    );
                    avx512::products(p, v, u, rows, m);
                    avx512::output_block(p, m, t0, nt, ycp);
                }
            })
        });
    }
    XCL.with(|s| *s.borrow_mut() = xcl);
    let (o, [ot, oh, ow]) = (p.o, p.out);
    let l = ot * oh * ow;
    // Filled through its spare capacity (every element is written below), so no
    // zeroing pass over tens of MB.
    let len = p.n * o * l;
    let mut y: Vec<f32> = Vec::with_capacity(len);
    let yp = SyncPtr(y.spare_capacity_mut().as_mut_ptr() as *mut f32);
    let [_, eh, ew] = p.even();
    let ycl_ref = &ycl[..];
    (0..p.n * ot).into_par_iter().for_each(|nt_| {
        let (ni, t) = (nt_ / ot, nt_ % ot);
        for h in 0..oh {
            let src = &ycl_ref[(((ni * (even / (eh * ew)) + t) * eh + h) * ew) * p.op()..];
            let dst = ni * o * l + (t * oh + h) * ow;
            // SAFETY: AVX-512F checked by the caller; task (n, t) writes only that
            // frame of every channel of `y`.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                avx512::untranspose_row(src, (o, p.op(), ow), yp.get().add(dst), l)
            }
        }
    });
    YCL.with(|s| *s.borrow_mut() = ycl);
    // SAFETY: the tasks above wrote all `len` elements (every channel of every
    // (n, t, h) row, each row's positions in whole and masked vectors).
    unsafe { y.set_len(len) };
    y
}

/// The tiles per transform chunk when `p` runs point-major ([`whole_products`]): on
/// deep layers (at least 256 channels on one side) whose transformed input and
/// products for all tiles take at most `WHOLE_MB`. There a block of tiles does too
/// little work per pass over the transformed weight (`pts·C·O` floats, 16 MB at 512
/// channels) or, for the weight gradient, over its `dU`.
fn whole_chunk(p: &Prob) -> Option<usize> {
    let rows = p.total_tiles().div_ceil(R) * R;
    let (lv, lm) = p.lays();
    let bytes = 4 * (lv.len(rows) + lm.len(rows));
    (p.c.max(p.o) >= 256 && bytes <= WHOLE_MB << 20).then_some(4 * R)
}

/// The largest point-major footprint, MB.
const WHOLE_MB: usize = 96;

/// The forward core point-major: all tiles transformed first (in chunks of `chunk`
/// tiles, in parallel), then one gemm per point over all tiles (so each point's
/// transformed weight is read once and stays in L2), then the output transforms.
/// Every product is the one the blocked order computes, so the output bits agree.
fn whole_products(p: &Prob, xcl: &[f32], u: &[f32], chunk: usize, ycp: SyncPtr<f32>) {
    with_whole(p, |vs, ms| {
        whole_products_in(p, (xcl, u), chunk, ycp, vs, ms)
    })
}

/// Runs `f` on the point-major buffers of all of `p`'s tiles (input side, output
/// side), kept between calls.
fn with_whole<T>(p: &Prob, f: impl FnOnce(&mut [f32], &mut [f32]) -> T) -> T {
    let rows = p.total_tiles().div_ceil(R) * R;
    let (lv, lm) = p.lays();
    let (mut v, mut m) = WHOLE.with(|s| std::mem::take(&mut *s.borrow_mut()));
    let r = f(scratch(&mut v, lv.len(rows)), scratch(&mut m, lm.len(rows)));
    WHOLE.with(|s| *s.borrow_mut() = (v, m));
    r
}

/// [`whole_products`] on the buffers `vs`, `ms`.
fn whole_products_in(
    p: &Prob,
    (xcl, u): (&[f32], &[f32]),
    chunk: usize,
    ycp: SyncPtr<f32>,
    vs: &mut [f32],
    ms: &mut [f32],
) {
    let total = p.total_tiles();
    let rows = total.div_ceil(R) * R;
    let (lv, lm) = p.lays();
    // SAFETY (all three stages): AVX-512F is checked by the caller; chunk `b` owns
    // groups `b·chunk/R..` of `v` and `m`, point `xi` owns its rows of every group of
    // `m`, and a chunk's tiles own their outputs.
    vs.par_chunks_mut(lv.len(chunk))
        .enumerate()
        .for_each(|(b, vc)| {
            let t0 = b * chunk;
            let nt = chunk.min(total - t0);
            #[cfg(target_arch = "x86_64")]
            unsafe {
                avx512::transform_block::<false>(
                    p,
                    xcl,
                    (t0, nt, nt.div_ceil(R) * R),
                    lv,
                    vc.as_mut_ptr(),
                )
            };
        });
    let mp = SyncPtr(ms.as_mut_ptr());
    let vr = &vs[..];
    (0..p.pts()).into_par_iter().for_each(|xi| {
        #[cfg(target_arch = "x86_64")]
        unsafe {
            avx512::point_products(p, vr, u, rows, mp.get(), xi)
        };
    });
    ms.par_chunks(lm.len(chunk))
        .enumerate()
        .for_each(|(b, mc)| {
            let t0 = b * chunk;
            #[cfg(target_arch = "x86_64")]
            unsafe {
                avx512::output_block(p, mc, t0, chunk.min(total - t0), ycp)
            };
        });
}

/// Tiles per block: `NB`, or fewer (a multiple of `R`) so both cores get several
/// blocks on small maps. Up to 64 channels a block of 12 tiles measured 5-10%
/// faster (its transforms stay nearer L1 beside the 1 MB transformed weight); wider
/// layers amortise their larger weight over `NB`.
fn block_tiles(p: &Prob) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let want = p.total_tiles().div_ceil(4 * threads).div_ceil(R) * R;
    let most = match (p.c.max(p.o) <= 64, p.t3) {
        (true, _) => 2 * R,
        (false, true) => NB,
        // A 1x4x4 tile's transforms are a quarter of a 4x4x4 tile's: 96 tiles keep the
        // block in L2 (MC3-18's layers 2-4 measured 5-10% faster than with 48).
        (false, false) => 2 * NB,
    };
    want.clamp(R, most)
}

/// `dW`, `[O, C, 3, 3, 3]`, for a geometry where [`fits`] holds:
/// `dU[ξ][c][o] = Σ_tiles V[ξ][tile][c] · (A dY Aᵀ)[ξ][tile][o]`, then `dW = Gᵀ dU G`.
///
/// The tiles are split into a fixed number of contiguous parts (it depends on the
/// layer, not on the thread count); each part's task transforms its blocks into its
/// own cache and accumulates its own `dU`, tile by tile; the parts are then summed in
/// order. So both the data a task reads and every element's summation order stay
/// fixed.
pub(super) fn bwd_weight(g: &Geom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let p = Prob::of(g);
    let mut xcl = XCL.with(|s| std::mem::take(&mut *s.borrow_mut()));
    channels_last(&p, x, &mut xcl);
    // dY channels-last on the same padded grid without a shift, so every tile's
    // 2x2x2 gradient is 8 vector loads (zeros past the output's extent).
    let dyp = Prob {
        c: p.o,
        inp: p.out,
        pad: [0; 3],
        ..p
    };
    let mut dycl = DYCL.with(|s| std::mem::take(&mut *s.borrow_mut()));
    channels_last(&dyp, dy, &mut dycl);
    let (cp, op, pts) = (p.cp(), p.op(), p.pts());
    let du = match whole_chunk(&p) {
        Some(chunk) => du_whole(&p, &xcl, &dycl, chunk),
        None => du_blocked(&p, &xcl, &dycl),
    };
    XCL.with(|s| *s.borrow_mut() = xcl);
    DYCL.with(|s| *s.borrow_mut() = dycl);
    // dW[o][c] = Gᵀ dU[·][c][o] G, 16 output channels at a time (one lane each: each
    // point's 16 values are one contiguous read of dU).
    let (c, o, kk) = (p.c, p.o, p.taps());
    let mut dw = vec![0f32; o * c * kk];
    dw.par_chunks_mut(L * c * kk)
        .enumerate()
        .for_each(|(ob, dst)| {
            let o0 = ob * L;
            for ci in 0..c {
                let t: [[f64; L]; PTS] = std::array::from_fn(|xi| {
                    let mut v = [0f64; L];
                    if xi < pts {
                        let src = &du[(xi * cp + ci) * op + o0..][..L];
                        v = std::array::from_fn(|l| src[l] as f64);
                    }
                    v
                });
                let r = if p.t3 {
                    weight_tile_t(&t)
                } else {
                    weight_tile_t_2d(&t)
                };
                for l in 0..dst.len() / (c * kk) {
                    let d = &mut dst[(l * c + ci) * kk..][..kk];
                    for (k, v) in d.iter_mut().enumerate() {
                        *v = r[k][l];
                    }
                }
            }
        });
    dw
}

/// `dU` from blocks of tiles: a fixed number of parts (by layer, not thread count),
/// each accumulating its own partial `dU` block by block, summed in order.
fn du_blocked(p: &Prob, xcl_ref: &[f32], dycl_ref: &[f32]) -> Vec<f32> {
    let (cp, op) = (p.cp(), p.op());
    let (lv, lm) = p.lays();
    let total = p.total_tiles();
    let nb = DW_NB;
    let blocks = total.div_ceil(nb);
    let pts = p.pts();
    let du_len = pts * cp * op;
    // At most 8 partial sums and about 64 MB of them.
    let parts = ((64 << 20) / (4 * du_len)).clamp(1, 8).min(blocks);
    // Reused between calls: tens of MB of fresh pages per call cost more than the
    // products (page faults serialise on the address-space lock).
    let mut partial = PARTIAL.with(|s| std::mem::take(&mut *s.borrow_mut()));
    scratch(&mut partial, parts * du_len)
        .par_chunks_mut(du_len)
        .enumerate()
        .for_each(|(k, du)| {
            du.fill(0.0);
            BLOCK.with(|s| {
                let (v, m) = &mut *s.borrow_mut();
                scratch(v, lv.len(nb));
                scratch(m, lm.len(nb));
                for b in k * blocks / parts..(k + 1) * blocks / parts {
                    let t0 = b * nb;
                    let nt = nb.min(total - t0);
                    let rows = nt.div_ceil(R) * R;
                    // SAFETY: AVX-512F checked by the caller; `v`, `m` and `du` are this
                    // task's own.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        avx512::transform_block::<false>(
                            p,
                            xcl_ref,
                            (t0, nt, rows),
                            lv,
                            v.as_mut_ptr(),
                        );
                        avx512::transform_block::<true>(
                            p,
                            dycl_ref,
                            (t0, nt, rows),
                            lm,
                            m.as_mut_ptr(),
                        );
                        for xi in 0..pts {
                            let d = du.as_mut_ptr().add(xi * cp * op);
                            avx512::dw_point(v, m, (lv, lm), xi, rows, d);
                        }
                    }
                }
            })
        });
    // Parts summed in order.
    let mut du = vec![0f32; du_len];
    du.par_chunks_mut(4096).enumerate().for_each(|(i, d)| {
        let off = i * 4096;
        for k in 0..parts {
            let src = &partial[k * du_len + off..][..d.len()];
            for (d, s) in d.iter_mut().zip(src) {
                *d += *s;
            }
        }
    });
    PARTIAL.with(|s| *s.borrow_mut() = partial);
    du
}

/// `dU` point-major, for the layers [`whole_chunk`] picks: all tiles' `V` and
/// transformed dY first, then per point one reduction over all tiles in order (no
/// partial sums; each point's `dU` stays in L2).
fn du_whole(p: &Prob, xcl: &[f32], dycl: &[f32], chunk: usize) -> Vec<f32> {
    with_whole(p, |vs, ms| du_whole_in(p, (xcl, dycl), chunk, vs, ms))
}

/// [`du_whole`] on the buffers `vs`, `ms`.
fn du_whole_in(
    p: &Prob,
    (xcl, dycl): (&[f32], &[f32]),
    chunk: usize,
    vs: &mut [f32],
    ms: &mut [f32],
) -> Vec<f32> {
    let (cp, op, pts) = (p.cp(), p.op(), p.pts());
    let total = p.total_tiles();
    let rows = total.div_ceil(R) * R;
    let (lv, lm) = p.lays();
    // SAFETY (both stages): AVX-512F is checked by the caller; chunk `b` owns groups
    // `b·chunk/R..` of `v` and `m`; point `xi` owns its slice of `du`.
    vs.par_chunks_mut(lv.len(chunk))
        .zip(ms.par_chunks_mut(lm.len(chunk)))
        .enumerate()
        .for_each(|(b, (vc, mc))| {
            let t0 = b * chunk;
            let nt = chunk.min(total - t0);
            let r = nt.div_ceil(R) * R;
            #[cfg(target_arch = "x86_64")]
            unsafe {
                avx512::transform_block::<false>(p, xcl, (t0, nt, r), lv, vc.as_mut_ptr());
                avx512::transform_block::<true>(p, dycl, (t0, nt, r), lm, mc.as_mut_ptr());
            }
        });
    let mut du = vec![0f32; pts * cp * op];
    let (vr, mr) = (&vs[..], &ms[..]);
    du.par_chunks_mut(cp * op).enumerate().for_each(|(xi, d)| {
        #[cfg(target_arch = "x86_64")]
        unsafe {
            avx512::dw_point(vr, mr, (lv, lm), xi, rows, d.as_mut_ptr())
        };
    });
    du
}

/// Tiles per weight-gradient block: each block reads and writes its task's whole
/// `dU` (`64·Cp·Op` floats) once, its transforms take `64·(Cp + Op)` floats per
/// tile; 24 measured best on R3D-18's 64- and 128-channel layers (18-48 within 8%).
const DW_NB: usize = 24;

/// `Gᵀ v` lane by lane, the adjoint of [`g_row`]: `Gᵀ = [[1, 1/2, 1/2, 0], [0, 1/2,
/// -1/2, 0], [0, 1/2, 1/2, 1]]`.
#[inline(always)]
fn gt_row(v: [&[f64; L]; 4]) -> [[f64; L]; 3] {
    let mut r = [[0f64; L]; 3];
    for l in 0..L {
        let (a, b, c, d) = (v[0][l], v[1][l], v[2][l], v[3][l]);
        r[0][l] = a + 0.5 * (b + c);
        r[1][l] = 0.5 * (b - c);
        r[2][l] = 0.5 * (b + c) + d;
    }
    r
}

/// `Gᵀ t G` along H and W of 16 transformed 1x4x4 tiles (the first 16 points of
/// `t`), one per lane: the adjoint of [`weight_tile_2d`]. Taps 9.. of the result are
/// zero.
fn weight_tile_t_2d(t: &[[f64; L]; PTS]) -> [[f32; L]; 27] {
    let mut a = [[[0f64; L]; 3]; 4]; // [bb][k]
    for bb in 0..4 {
        let b = bb * 4;
        a[bb] = gt_row([&t[b], &t[b + 1], &t[b + 2], &t[b + 3]]);
    }
    let mut out = [[0f32; L]; 27];
    for k in 0..3 {
        let r = gt_row([&a[0][k], &a[1][k], &a[2][k], &a[3][k]]);
        for j in 0..3 {
            for l in 0..L {
                out[j * 3 + k][l] = r[j][l] as f32;
            }
        }
    }
    out
}

/// `Gᵀ t G` along all three axes of 16 transformed tiles, one per lane: the adjoint
/// of [`weight_tile`].
fn weight_tile_t(t: &[[f64; L]; PTS]) -> [[f32; L]; 27] {
    let row = gt_row;
    let mut a = [[[[0f64; L]; 3]; 4]; 4]; // [aa][bb][k]
    for aa in 0..4 {
        for bb in 0..4 {
            let b = (aa * 4 + bb) * 4;
            a[aa][bb] = row([&t[b], &t[b + 1], &t[b + 2], &t[b + 3]]);
        }
    }
    let mut b = [[[[0f64; L]; 3]; 3]; 4]; // [aa][j][k]
    for aa in 0..4 {
        for k in 0..3 {
            let r = row([&a[aa][0][k], &a[aa][1][k], &a[aa][2][k], &a[aa][3][k]]);
            for j in 0..3 {
                b[aa][j][k] = r[j];
            }
        }
    }
    let mut out = [[0f32; L]; 27];
    for j in 0..3 {
        for k in 0..3 {
            let r = row([&b[0][j][k], &b[1][j][k], &b[2][j][k], &b[3][j][k]]);
            for i in 0..3 {
                for l in 0..L {
                    out[(i * 3 + j) * 3 + k][l] = r[i][l] as f32;
                }
            }
        }
    }
    out
}

thread_local! {
    /// The channels-last input, kept between calls (tens of MB: fresh pages per call
    /// cost as much as a small layer).
    static XCL: std::cell::RefCell<Vec<f32>> = Default::default();
    /// The forward's channels-last output.
    static YCL: std::cell::RefCell<Vec<f32>> = Default::default();
    /// The weight gradient's channels-last dY.
    static DYCL: std::cell::RefCell<Vec<f32>> = Default::default();
    /// The weight gradient's partial sums.
    static PARTIAL: std::cell::RefCell<Vec<f32>> = Default::default();
    /// All tiles' transformed input and products (or transformed dY) on layers that
    /// run point-major.
    static WHOLE: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = Default::default();
    /// A block's transformed input and product (or transformed dY), laid out by `Lay`.
    static BLOCK: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = Default::default();
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{tile_at, Lay, Prob, SyncPtr, PTS, R};

    /// One (t, h) row of `C` channel rows (`cstride` apart from `src`, `W` long each)
    /// written channels-last, `dst[w·Cp + c]`, channels `C..Cp` zero: 16x16 blocks
    /// transposed in registers (a tail of `W` masked).
    ///
    /// # Safety
    /// AVX-512F must be available; `src` must hold `C` rows `cstride` apart.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose_row(
        src: &[f32],
        cstride: usize,
        (c, cp, w): (usize, usize, usize),
        dst: &mut [f32],
    ) {
        debug_assert!(dst.len() >= w * cp && src.len() >= (c - 1) * cstride + w);
        let (sb, db) = (src.as_ptr(), dst.as_mut_ptr());
        for w0 in (0..w).step_by(16) {
            let wn = 16.min(w - w0);
            let mask: u16 = if wn == 16 { !0 } else { (1u16 << wn) - 1 };
            for c0 in (0..cp).step_by(16) {
                let r: [__m512; 16] = std::array::from_fn(|i| {
                    if c0 + i < c {
                        _mm512_maskz_loadu_ps(mask, sb.add((c0 + i) * cstride + w0))
                    } else {
                        _mm512_setzero_ps()
                    }
                });
                let cols = transpose16(r);
                for (j, v) in cols.iter().enumerate().take(wn) {
                    _mm512_storeu_ps(db.add((w0 + j) * cp + c0), *v);
                }
            }
        }
    }

    /// The 16x16 transpose of `r` (row `j` of the result is column `j` of `r`).
    #[inline(always)]
    unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        let pd = |v: __m512| _mm512_castps_pd(v);
        let mut u = [_mm512_setzero_ps(); 16];
        for i in 0..4 {
            let (a, b, c, d) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
            u[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(a), pd(c)));
            u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(a), pd(c)));
            u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(b), pd(d)));
            u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(b), pd(d)));
        }
        let mut v = [_mm512_setzero_ps(); 16];
        for h in 0..2 {
            for k in 0..4 {
                let (a, b) = (u[8 * h + k], u[8 * h + 4 + k]);
                v[8 * h + k] = _mm512_shuffle_f32x4::<0x88>(a, b);
                v[8 * h + 4 + k] = _mm512_shuffle_f32x4::<0xdd>(a, b);
            }
        }
        let mut out = [_mm512_setzero_ps(); 16];
        for k in 0..8 {
            out[k] = _mm512_shuffle_f32x4::<0x88>(v[k], v[8 + k]);
            out[8 + k] = _mm512_shuffle_f32x4::<0xdd>(v[k], v[8 + k]);
        }
        out
    }

    /// `Bᵀ d` for one axis: `[d0 - d2, d1 + d2, d2 - d1, d1 - d3]`.
    #[inline(always)]
    unsafe fn bt(d: [__m512; 4]) -> [__m512; 4] {
        [
            _mm512_sub_ps(d[0], d[2]),
            _mm512_add_ps(d[1], d[2]),
            _mm512_sub_ps(d[2], d[1]),
            _mm512_sub_ps(d[1], d[3]),
        ]
    }

    /// `Aᵀ m` for one axis: `[m0 + m1 + m2, m1 - m2 - m3]`.
    #[inline(always)]
    unsafe fn at(m: [__m512; 4]) -> [__m512; 2] {
        [
            _mm512_add_ps(_mm512_add_ps(m[0], m[1]), m[2]),
            _mm512_sub_ps(_mm512_sub_ps(m[1], m[2]), m[3]),
        ]
    }

    /// A stack array of vectors whose every element is written before it is read.
    /// Zero-initialising the tile transforms' 2-4 KiB arrays cost a `memset` per tile
    /// and 16 channels: 4-5% of a training step.
    struct Stack<const N: usize>(std::mem::MaybeUninit<[__m512; N]>);

    impl<const N: usize> Stack<N> {
        #[inline(always)]
        fn new() -> Self {
            Self(std::mem::MaybeUninit::uninit())
        }
        /// # Safety
        /// `i < N`.
        #[inline(always)]
        unsafe fn set(&mut self, i: usize, v: __m512) {
            debug_assert!(i < N);
            self.0.as_mut_ptr().cast::<__m512>().add(i).write(v)
        }
        /// # Safety
        /// `i < N`, and element `i` was set.
        #[inline(always)]
        unsafe fn get(&self, i: usize) -> __m512 {
            debug_assert!(i < N);
            self.0.as_ptr().cast::<__m512>().add(i).read()
        }
    }

    /// `A y` for one axis (the adjoint of [`at`]): `[y0, y0 + y1, y0 - y1, -y1]`.
    #[inline(always)]
    unsafe fn a(y: [__m512; 2]) -> [__m512; 4] {
        [
            y[0],
            _mm512_add_ps(y[0], y[1]),
            _mm512_sub_ps(y[0], y[1]),
            _mm512_sub_ps(_mm512_setzero_ps(), y[1]),
        ]
    }

    /// `Bᵀ d B` (3D) of the 4x4x4 window at `src` (16 channels; frame, row and
    /// position strides in floats), point `ξ = (i·4 + j)·4 + k` stored at `dst(ξ)`.
    /// Per frame the W and H passes run in registers; one stack round trip for T.
    /// Without `T3`, the 2D transform of the 1x4x4 window (points `j·4 + k`).
    #[inline(always)]
    unsafe fn input_tile<const T3: bool>(
        src: *const f32,
        [st, sh, sw]: [usize; 3],
        dst: impl Fn(usize) -> *mut f32,
    ) {
        let mut f = Stack::<PTS>::new(); // [i][j][k], transformed along k and j
        for i in 0..if T3 { 4 } else { 1 } {
            let r: [[__m512; 4]; 4] = std::array::from_fn(|row| {
                // [row][k]
                let p = src.add(i * st + row * sh);
                bt(std::array::from_fn(|k| _mm512_loadu_ps(p.add(k * sw))))
            });
            for k in 0..4 {
                let c = bt(std::array::from_fn(|row| r[row][k]));
                for j in 0..4 {
                    if T3 {
                        f.set((i * 4 + j) * 4 + k, c[j]);
                    } else {
                        _mm512_storeu_ps(dst(j * 4 + k), c[j]);
                    }
                }
            }
        }
        if !T3 {
            return;
        }
        // Every (i, j, k) was set above.
        for jk in 0..16 {
            let c = bt(std::array::from_fn(|i| f.get(i * 16 + jk)));
            for i in 0..4 {
                _mm512_storeu_ps(dst(i * 16 + jk), c[i]);
            }
        }
    }

    /// The transform of tiles `t0..t0+nt` into rows `0..rows` at `dst` (layout `lay`,
    /// rows `nt..rows` zero): the input's `Bᵀ d B` from its channels-last copy `src`,
    /// or with `GRAD` the gradient's `A dY Aᵀ` from dY's (same padded grid, unshifted).
    ///
    /// # Safety
    /// AVX-512F must be available; `dst` must hold `lay.len(rows)` floats.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transform_block<const GRAD: bool>(
        p: &Prob,
        src: &[f32],
        (t0, nt, rows): (usize, usize, usize),
        lay: Lay,
        dst: *mut f32,
    ) {
        let w = lay.w;
        let [_, hp, wp] = p.padded();
        let strides = [hp * wp * w, wp * w, w];
        let sb = src.as_ptr();
        let width = if GRAD { p.o } else { p.c };
        let t3 = p.t3;
        each_vector(p, width, (t0, nt, rows), lay, dst, |base, out, ps| {
            if GRAD {
                let [st, sh, sw] = strides;
                let g = |q: usize| {
                    let (a, b, e) = (q / 4, (q / 2) % 2, q % 2);
                    _mm512_loadu_ps(sb.add(base + a * st + b * sh + e * sw))
                };
                if t3 {
                    grad_tile::<true>(g, |xi| out.add(xi * ps));
                } else {
                    grad_tile::<false>(g, |xi| out.add(xi * ps));
                }
            } else if t3 {
                input_tile::<true>(sb.add(base), strides, |xi| out.add(xi * ps));
            } else {
                input_tile::<false>(sb.add(base), strides, |xi| out.add(xi * ps));
            }
        });
    }

    /// For each row `j < rows` of a block at `dst` (layout `lay`): rows past `nt` are
    /// zeroed; for the others, `f(offset, out, ps)` runs once per 16-channel vector,
    /// with `offset` the tile's window in a channels-last copy of `width` channels on
    /// `p`'s padded grid (plus the vector's channels) and its point `ξ` going to
    /// `out + ξ·ps`.
    #[inline(always)]
    unsafe fn each_vector(
        p: &Prob,
        width: usize,
        (t0, nt, rows): (usize, usize, usize),
        lay: Lay,
        dst: *mut f32,
        mut f: impl FnMut(usize, *mut f32, usize),
    ) {
        let grid = Prob { c: width, ..*p };
        let ps = lay.ps();
        for j in 0..rows {
            if j >= nt {
                for xi in 0..lay.pts {
                    std::ptr::write_bytes(dst.add(lay.at(j, xi)), 0, lay.w);
                }
                continue;
            }
            let (_, base, _) = tile_at(&grid, t0 + j);
            let row = dst.add(lay.at(j, 0));
            for cg in (0..lay.w).step_by(16) {
                f(base + cg, row.add(cg), ps);
            }
        }
    }

    /// `M[ξ] = V[ξ] · U[ξ]` for the 64 points of a block of `rows` tiles.
    ///
    /// # Safety
    /// AVX-512F must be available; `v`, `u`, `m` must be a block's buffers for `p`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn products(p: &Prob, v: &[f32], u: &[f32], rows: usize, m: &mut [f32]) {
        for xi in 0..p.pts() {
            point_products(p, v, u, rows, m.as_mut_ptr(), xi);
        }
    }

    /// `M[ξ] = V[ξ] · U[ξ]` for point `xi` of `rows` tiles (`m`: the products' block).
    ///
    /// # Safety
    /// AVX-512F must be available; `v`, `u`, `m` must be buffers of `rows` tiles for
    /// `p`, and point `xi` of `m` this call's only.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn point_products(
        p: &Prob,
        v: &[f32],
        u: &[f32],
        rows: usize,
        mb: *mut f32,
        xi: usize,
    ) {
        let (c, op) = (p.c, p.op());
        let (lv, lm) = p.lays();
        let (vb, ub) = (v.as_ptr(), u.as_ptr());
        let us = p.us();
        let ux = ub.add(xi * c * us);
        // Rows in chunks whose slice of V stays in L1/L2 while every column group
        // runs over it (a whole layer's V per point is a megabyte at 512 channels).
        for s0 in (0..rows).step_by(SUB) {
            let s1 = (s0 + SUB).min(rows);
            let mut o0 = 0;
            while o0 < op {
                let nv = ((op - o0) / 16).min(4);
                for r0 in (s0..s1).step_by(R) {
                    let (vr, mr) = (vb.add(lv.at(r0, xi)), mb.add(lm.at(r0, xi) + o0));
                    match nv {
                        4 => gemm_tile::<4>(vr, lv.rs, c, ux.add(o0), us, mr, lm.rs),
                        3 => gemm_tile::<3>(vr, lv.rs, c, ux.add(o0), us, mr, lm.rs),
                        2 => gemm_tile::<2>(vr, lv.rs, c, ux.add(o0), us, mr, lm.rs),
                        _ => gemm_tile::<1>(vr, lv.rs, c, ux.add(o0), us, mr, lm.rs),
                    }
                }
                o0 += nv * 16;
            }
        }
    }

    /// `M[r][o0..] = Σ_c V[r][c] · U[c][o0..]` for `R` tile rows and `NV` vectors
    /// (row strides `vs` of V, `us` of U, `ms` of M).
    #[inline(always)]
    unsafe fn gemm_tile<const NV: usize>(
        v: *const f32,
        vs: usize,
        c: usize,
        u: *const f32,
        us: usize,
        m: *mut f32,
        ms: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); NV]; R];
        for ci in 0..c {
            let uv: [__m512; NV] =
                std::array::from_fn(|k| _mm512_loadu_ps(u.add(ci * us + k * 16)));
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let b = _mm512_set1_ps(*v.add(r * vs + ci));
                for k in 0..NV {
                    acc_r[k] = _mm512_fmadd_ps(b, uv[k], acc_r[k]);
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for k in 0..NV {
                _mm512_storeu_ps(m.add(r * ms + k * 16), acc_r[k]);
            }
        }
    }

    /// `y = Aᵀ M A` for tiles `t0..t0+nt` into the channels-last output `ycl`
    /// (`[N, Et, Eh, Ew, Op]` on the tiles' even grid).
    ///
    /// # Safety
    /// AVX-512F must be available; these tiles of `ycl` are written by this call only.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn output_block(
        p: &Prob,
        m: &[f32],
        t0: usize,
        nt: usize,
        ycl: SyncPtr<f32>,
    ) {
        let op = p.op();
        let (_, lm) = p.lays();
        let [et, eh, ew] = p.even();
        let mb = m.as_ptr();
        for j in 0..nt {
            let (ni, _, org) = tile_at(p, t0 + j);
            let row = mb.add(lm.at(j, 0));
            let ps = lm.ps();
            let base = (((ni * et + org[0]) * eh + org[1]) * ew + org[2]) * op;
            for ov in (0..op).step_by(16) {
                let dst = ycl.get().add(base + ov);
                let src = |xi| row.add(xi * ps + ov);
                let out = |q| {
                    let (a, b, e) = (q / 4, (q / 2) % 2, q % 2);
                    dst.add(((a * eh + b) * ew + e) * op)
                };
                if p.t3 {
                    output_tile::<true>(src, out);
                } else {
                    output_tile::<false>(src, out);
                }
            }
        }
    }

    /// Row `(n, t, h)` of the channels-last output (`src`: `W'` positions of `Op`
    /// floats) into NCTHW at `dst` (channel `c` at `dst + c·l`), 16x16 blocks
    /// transposed in registers.
    ///
    /// # Safety
    /// AVX-512F must be available; `dst + c·l + w` must be writable for `c < o`,
    /// `w < W'`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn untranspose_row(
        src: &[f32],
        (o, op, w): (usize, usize, usize),
        dst: *mut f32,
        l: usize,
    ) {
        let sb = src.as_ptr();
        for w0 in (0..w).step_by(16) {
            let wn = 16.min(w - w0);
            let mask: u16 = if wn == 16 { !0 } else { (1u16 << wn) - 1 };
            for c0 in (0..o).step_by(16) {
                let r: [__m512; 16] = std::array::from_fn(|i| {
                    if i < wn {
                        _mm512_loadu_ps(sb.add((w0 + i) * op + c0))
                    } else {
                        _mm512_setzero_ps()
                    }
                });
                let rows = transpose16(r);
                for (j, v) in rows.iter().enumerate().take((o - c0).min(16)) {
                    _mm512_mask_storeu_ps(dst.add((c0 + j) * l + w0), mask, *v);
                }
            }
        }
    }

    /// `Aᵀ s A` (3D) of the 64 points at `src(ξ)` to the 2x2x2 outputs, output
    /// `(ya·2 + yb)·2 + ye` into `out`; without `T3`, of the 16 points `j·4 + k` to
    /// the 2x2 outputs `yb·2 + ye`.
    #[inline(always)]
    unsafe fn output_tile<const T3: bool>(
        src: impl Fn(usize) -> *const f32,
        out: impl Fn(usize) -> *mut f32,
    ) {
        if !T3 {
            let b: [[__m512; 2]; 4] = std::array::from_fn(|j| {
                at(std::array::from_fn(|k| _mm512_loadu_ps(src(j * 4 + k))))
            });
            for ye in 0..2 {
                let r = at(std::array::from_fn(|j| b[j][ye]));
                _mm512_storeu_ps(out(ye), r[0]);
                _mm512_storeu_ps(out(2 + ye), r[1]);
            }
            return;
        }
        let mut e = Stack::<32>::new(); // [ya][j][k]
        for jk in 0..16 {
            let r = at(std::array::from_fn(|i| _mm512_loadu_ps(src(i * 16 + jk))));
            e.set(jk, r[0]);
            e.set(16 + jk, r[1]);
        }
        // All 32 set above.
        for ya in 0..2 {
            let b: [[__m512; 2]; 4] =
                std::array::from_fn(|j| at(std::array::from_fn(|k| e.get(ya * 16 + j * 4 + k))));
            for ye in 0..2 {
                let r = at(std::array::from_fn(|j| b[j][ye]));
                _mm512_storeu_ps(out((ya * 2) * 2 + ye), r[0]);
                _mm512_storeu_ps(out((ya * 2 + 1) * 2 + ye), r[1]);
            }
        }
    }

    /// `A g Aᵀ` (3D) of one 2x2x2 gradient tile (`g[(ya·2 + yb)·2 + ye]`) to the 64
    /// points at `dst(ξ)`: the adjoint of [`output_tile`]; without `T3`, of one 2x2
    /// tile (`g[yb·2 + ye]`) to 16 points.
    #[inline(always)]
    unsafe fn grad_tile<const T3: bool>(
        g: impl Fn(usize) -> __m512,
        dst: impl Fn(usize) -> *mut f32,
    ) {
        if !T3 {
            let b: [[__m512; 4]; 2] = std::array::from_fn(|yb| a([g(yb * 2), g(yb * 2 + 1)]));
            for k in 0..4 {
                let r = a([b[0][k], b[1][k]]);
                for j in 0..4 {
                    _mm512_storeu_ps(dst(j * 4 + k), r[j]);
                }
            }
            return;
        }
        let mut e = Stack::<32>::new(); // [ya][j][k]
        for ya in 0..2 {
            let b: [[__m512; 4]; 2] = std::array::from_fn(|yb| {
                let q = (ya * 2 + yb) * 2;
                a([g(q), g(q + 1)])
            });
            for k in 0..4 {
                let r = a([b[0][k], b[1][k]]);
                for j in 0..4 {
                    e.set(ya * 16 + j * 4 + k, r[j]);
                }
            }
        }
        // All 32 set above.
        for jk in 0..16 {
            let r = a([e.get(jk), e.get(16 + jk)]);
            for i in 0..4 {
                _mm512_storeu_ps(dst(i * 16 + jk), r[i]);
            }
        }
    }

    /// `dU[c][o] += Σ_rows V[row][c] · M[row][o]` for point `xi` over `rows` tile
    /// rows in order (`dU` at `du`: `[Cp][Op]`). Rows go in sub-blocks whose slices
    /// of V and M stay in L1 while every channel tile and column group runs over them;
    /// reloading the accumulators keeps each sum's order.
    ///
    /// # Safety
    /// AVX-512F must be available; this call owns point `xi`'s `du`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dw_point(
        v: &[f32],
        m: &[f32],
        (lv, lm): (Lay, Lay),
        xi: usize,
        rows: usize,
        du: *mut f32,
    ) {
        let (cp, op) = (lv.w, lm.w);
        for s0 in (0..rows).step_by(SUB) {
            let s1 = (s0 + SUB).min(rows);
            for o0 in (0..op).step_by(64) {
                let nv = ((op - o0) / 16).min(4);
                let args = (v.as_ptr(), m.as_ptr(), (lv, lm), xi, s0, o0, du);
                match nv {
                    4 => dw_sub::<4>(args, s1, cp, op),
                    3 => dw_sub::<3>(args, s1, cp, op),
                    2 => dw_sub::<2>(args, s1, cp, op),
                    _ => dw_sub::<1>(args, s1, cp, op),
                }
            }
        }
    }

    type DwArgs = (
        *const f32,
        *const f32,
        (Lay, Lay),
        usize,
        usize,
        usize,
        *mut f32,
    );

    /// Rows per L1-resident sub-block of [`dw_point`] and [`point_products`] (a
    /// multiple of `R`).
    const SUB: usize = 48;

    /// [`dw_point`] over rows `s0..s1` and the `NV` vectors at `o0`: register tile of
    /// 4 channels x `NV` vectors, the reduction over rows in registers. Four channels
    /// divide every `Cp` (a multiple of 16), so no tile is partial; six (with a
    /// partial tail tile) measured 16% slower on R3D-18's layer 1 and 10% on layer 2
    /// (`vssl bench model` rows).
    #[inline(always)]
    unsafe fn dw_sub<const NV: usize>(
        (vb, mb, (lv, lm), xi, s0, o0, du): DwArgs,
        s1: usize,
        cp: usize,
        op: usize,
    ) {
        const CR: usize = 4;
        // `Cp` is a multiple of 16, so every channel tile is whole.
        debug_assert_eq!(cp % CR, 0);
        for c0 in (0..cp).step_by(CR) {
            let mut acc = [[_mm512_setzero_ps(); NV]; CR];
            for (cr, acc_c) in acc.iter_mut().enumerate() {
                for k in 0..NV {
                    acc_c[k] = _mm512_loadu_ps(du.add((c0 + cr) * op + o0 + k * 16));
                }
            }
            for g0 in (s0..s1).step_by(R) {
                let (vg, mg) = (vb.add(lv.at(g0, xi) + c0), mb.add(lm.at(g0, xi) + o0));
                for r in 0..R {
                    let mv: [__m512; NV] =
                        std::array::from_fn(|k| _mm512_loadu_ps(mg.add(r * lm.rs + k * 16)));
                    let vr = vg.add(r * lv.rs);
                    for (cr, acc_c) in acc.iter_mut().enumerate() {
                        let b = _mm512_set1_ps(*vr.add(cr));
                        for k in 0..NV {
                            acc_c[k] = _mm512_fmadd_ps(b, mv[k], acc_c[k]);
                        }
                    }
                }
            }
            for (cr, acc_c) in acc.iter().enumerate() {
                for k in 0..NV {
                    _mm512_storeu_ps(du.add((c0 + cr) * op + o0 + k * 16), acc_c[k]);
                }
            }
        }
    }
}
