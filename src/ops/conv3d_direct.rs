//! AVX-512 direct conv3d kernels: "same" stride-1 forward and input gradient, and the
//! weight gradient of any geometry with output rows at least 16 wide.
//!
//! Why it exists: R3D-18, R(2+1)D and C3D spend most of a training step in stride-1
//! convolutions with "same" padding (3x3x3, 1x3x3, 3x1x1), forward and input gradient
//! (which [`super::conv3d_cpu::bwd_input`] runs as such a convolution with the flipped
//! kernel). On that geometry output position `l` of a sample reads input position
//! `l + delta(tap)` of every channel, so a 16-position vector of one tap is a single
//! masked unaligned load straight from the input: no im2col/vol2col buffer, no
//! packing, and the whole `C·taps` reduction of an 8-channel x 32-position output tile
//! stays in 16 zmm registers. The weight gradient ([`bwd_weight`]) broadcasts from a
//! zero-padded input instead. The blocked vol2col+gemm path reached 110-160 GFLOP/s on
//! these layers; these kernels reach 175-210 of the machine's ~230
//! (`experiments/perf-cpu.md`).
//!
//! Lanes whose tap falls into padding (or past the sample's end) are masked off;
//! AVX-512 masked loads do not touch masked-off lanes, so their addresses may lie
//! outside the input. Each output element is summed in the same order whatever the
//! thread count, so results are deterministic.
// Elsewhere than x86-64 `applies` is false and the kernels are never called.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_variables))]

use rayon::prelude::*;

use super::conv3d::Geom;

/// Output channels per register tile (broadcast operand).
const MR: usize = 8;
/// 16-lane vectors of output positions per register tile.
const NV: usize = 2;

/// Whether the direct kernel handles `g` on this machine (f32 callers only).
pub(super) fn applies(g: &Geom) -> bool {
    g.stride == [1; 3] && g.out == g.inp && enabled()
}

/// Whether [`bwd_weight`] handles `g` (any strides, padding, dilation): output rows
/// shorter than 16 positions leave its register tile too little work per row
/// (measured slower than vol2col+gemm on the 8- and 4-wide maps of R3D-18's deeper
/// layers at 64 px).
pub(super) fn applies_weight(g: &Geom) -> bool {
    g.out[2] >= 16 && enabled()
}

/// AVX-512F present and not switched off with `VSSL_CONV_DIRECT=0` (for A/B runs).
fn enabled() -> bool {
    use std::sync::OnceLock;
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let wanted = std::env::var("VSSL_CONV_DIRECT").map_or(true, |v| v != "0");
        #[cfg(target_arch = "x86_64")]
        let cpu = std::arch::is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        let cpu = false;
        wanted && cpu
    })
}

/// The per-call tables of the geometry: input offset of each tap and, per 16-lane
/// chunk of a sample, the lanes each tap may read.
struct Taps {
    /// Offset (in elements, within one channel plane) of tap `k` relative to `l`.
    delta: Vec<isize>,
    /// `mask[chunk * kvol + k]`: lanes of `chunk` whose tap `k` lies inside the input.
    mask: Vec<u16>,
    /// Lanes of `chunk` that exist (`l < L`).
    store: Vec<u16>,
    kvol: usize,
}

impl Taps {
    fn new(g: &Geom) -> Self {
        let [t, h, w] = g.inp;
        let [k0, k1, k2] = g.k;
        let kvol = k0 * k1 * k2;
        let l = t * h * w;
        let chunks = l.div_ceil(16);
        let off = |ax: usize, k: usize| (k * g.dil[ax]) as isize - g.pad[ax] as isize;
        let mut delta = Vec::with_capacity(kvol);
        for a in 0..k0 {
            for b in 0..k1 {
                for e in 0..k2 {
                    delta.push((off(0, a) * h as isize + off(1, b)) * w as isize + off(2, e));
                }
            }
        }
        let inside = |v: isize, len: usize| v >= 0 && (v as usize) < len;
        let mut mask = vec![0u16; chunks * kvol];
        let mut store = vec![0u16; chunks];
        for pos in 0..l {
            let (ci, lane) = (pos / 16, pos % 16);
            store[ci] |= 1 << lane;
            let (pt, ph, pw) = (pos / (h * w), (pos / w) % h, pos % w);
            let mut k = 0;
            for a in 0..k0 {
                let ok_t = inside(pt as isize + off(0, a), t);
                for b in 0..k1 {
                    let ok_h = ok_t && inside(ph as isize + off(1, b), h);
                    for e in 0..k2 {
                        if ok_h && inside(pw as isize + off(2, e), w) {
                            mask[ci * kvol + k] |= 1 << lane;
                        }
                        k += 1;
                    }
                }
            }
        }
        Self {
            delta,
            mask,
            store,
            kvol,
        }
    }
}

/// `y = conv(x, w)` for a geometry where [`applies`] holds; `[N, O, T, H, W]`.
///
/// With `flipped`, `w` is the weight of the convolution whose input gradient this is
/// (`[C, O, kvol]` in `g`'s terms) and is used transposed with all three kernel axes
/// reversed; that reversal is the reversal of the flattened tap index.
pub(super) fn fwd(g: &Geom, x: &[f32], w: &[f32], flipped: bool) -> Vec<f32> {
    let taps = Taps::new(g);
    let (c, o, kvol, l) = (g.c, g.o, taps.kvol, g.l());
    let obs = o.div_ceil(MR);
    // Weights are read in place (deep layers have more weights than activations, so
    // packing them would cost more than the convolution): element (o, c, k) sits at
    // `o·rstride + c·cstride + kidx(k)`.
    let (rstride, cstride) = if flipped {
        (kvol, o * kvol)
    } else {
        (c * kvol, kvol)
    };
    let kidx = |k: usize| if flipped { kvol - 1 - k } else { k };
    let cps = l.div_ceil(16);
    let chunks = g.n * cps;
    let groups = chunks.div_ceil(NV);
    // Enough tasks for both cores even when the maps are tiny (deep layers): split
    // the output channels too.
    let threads = rayon::current_num_threads().max(1);
    let osplit = (16 * threads).div_ceil(groups).clamp(1, obs);
    let mut y = vec![0f32; g.n * o * l];
    let yp = SyncPtr(y.as_mut_ptr());
    (0..groups * osplit).into_par_iter().for_each(|task| {
        let (grp, part) = (task / osplit, task % osplit);
        let (ob0, ob1) = (part * obs / osplit, (part + 1) * obs / osplit);
        let first = grp * NV;
        let nv = NV.min(chunks - first);
        let mut tile = Tile::default();
        for v in 0..nv {
            let (n, ci) = ((first + v) / cps, (first + v) % cps);
            tile.x_off[v] = (n * c * l + ci * 16) as isize;
            tile.y_off[v] = n * o * l + ci * 16;
            tile.mask_row[v] = ci * kvol;
            tile.store[v] = taps.store[ci];
        }
        // Taps that read padding in every lane of the tile (a whole T or H border,
        // common in deep layers with T = 1 or 2) are skipped.
        tile.active.clear();
        tile.active.extend(
            (0..kvol)
                .filter(|&k| (0..nv).any(|v| taps.mask[tile.mask_row[v] + k] != 0))
                .map(|k| (k, kidx(k))),
        );
        for ob in ob0..ob1 {
            let rows = MR.min(o - ob * MR);
            // Rows past O reuse row 0 (results discarded).
            let wrow: [usize; MR] =
                std::array::from_fn(|r| if r < rows { (ob * MR + r) * rstride } else { 0 });
            // SAFETY: loads are masked to lanes inside `x` (see `Taps`), weight reads
            // are in bounds by the strides above, stores are masked to this task's
            // disjoint output tile.
            unsafe {
                #[cfg(target_arch = "x86_64")]
                {
                    let args = (x, w, &wrow, cstride, &taps, &tile);
                    let out = (c, l, rows, ob * MR, yp.get());
                    match nv {
                        2 => avx512::tile::<2>(args, out),
                        _ => avx512::tile::<1>(args, out),
                    }
                }
            }
        }
    });
    y
}

/// Output channels per weight-gradient register tile (four 16-lane vectors).
const WO: usize = 64;
/// Weight taps `(c, k)` per weight-gradient register tile (broadcast operand).
const WQ: usize = 6;
/// Output positions per weight-gradient block: the block's slice of `dYᵀ`
/// (`WB × 64` floats) stays in L1 while every tap tile of a task runs over it.
const WB: usize = 96;

/// `dW = Σ_positions dY · xᵀ(shifted)`, `[O, C, kvol]`, for any geometry (strides,
/// padding and dilation included) where [`applies_weight`] holds.
///
/// The register tile holds 64 output channels (four vectors, so `dY` is transposed
/// to `[N, L, O]` once) by 6 taps `(c, k)` whose input values are broadcast from a
/// zero-padded copy of `x`, so no lane ever needs a mask and every accumulator is
/// one weight: the reduction over positions runs in registers with no horizontal
/// sums. Each task owns a range of tap tiles and walks all positions in fixed-size
/// blocks, so the summation order of every weight is fixed.
pub(super) fn bwd_weight(g: &Geom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (n, c, o, l, lin) = (g.n, g.c, g.o, g.l(), g.lin());
    let [t, h, w] = g.inp;
    let [_, oh, ow] = g.out;
    let [s0, s1, s2] = g.stride;
    let [k0, k1, k2] = g.k;
    let kvol = k0 * k1 * k2;
    let [pt, ph, pw] = g.pad;
    let (tp, hp, wp) = (t + 2 * pt, h + 2 * ph, w + 2 * pw);
    let plane = tp * hp * wp;
    let (mut xp, mut dyt) = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    // Zero-padded input, [N, C, Tp, Hp, Wp]; every element written once.
    set_len(&mut xp, n * c * plane);
    xp.par_chunks_mut(plane).enumerate().for_each(|(nc, dst)| {
        let src = &x[nc * lin..][..lin];
        for (tpi, slab) in dst.chunks_mut(hp * wp).enumerate() {
            let Some(ti) = tpi.checked_sub(pt).filter(|&ti| ti < t) else {
                slab.fill(0.0);
                continue;
            };
            for (hpi, row) in slab.chunks_mut(wp).enumerate() {
                let Some(hi) = hpi.checked_sub(ph).filter(|&hi| hi < h) else {
                    row.fill(0.0);
                    continue;
                };
                row[..pw].fill(0.0);
                row[pw..pw + w].copy_from_slice(&src[(ti * h + hi) * w..][..w]);
                row[pw + w..].fill(0.0);
            }
        }
    });
    // dYᵀ, [N, L, Op] with Op = O rounded up to whole vectors (zero columns).
    let op = o.div_ceil(16) * 16;
    set_len(&mut dyt, n * l * op);
    dyt.par_chunks_mut(64 * op)
        .enumerate()
        .for_each(|(blk, dst)| {
            let (j0, rows) = (blk * 64, dst.len() / op);
            let mut r = 0;
            while r < rows {
                // Rows r.. of this block within one sample; dY rows read contiguously.
                let (ni, li) = ((j0 + r) / l, (j0 + r) % l);
                let len = (l - li).min(rows - r);
                for oo in 0..o {
                    let src = &dy[(ni * o + oo) * l + li..][..len];
                    for (i, v) in src.iter().enumerate() {
                        dst[(r + i) * op + oo] = *v;
                    }
                }
                for i in r..r + len {
                    dst[i * op + o..(i + 1) * op].fill(0.0);
                }
                r += len;
            }
        });
    // Offset of tap q = (c, k) in `xp` relative to a position's padded base.
    let q_total = c * kvol;
    let q_off: Vec<usize> = (0..q_total)
        .map(|q| {
            let (ci, k) = (q / kvol, q % kvol);
            let (a, b, e) = (k / (k1 * k2), (k / k2) % k1, k % k2);
            ci * plane + ((a * g.dil[0]) * hp + b * g.dil[1]) * wp + e * g.dil[2]
        })
        .collect();
    let obs = op.div_ceil(WO);
    let q_tiles = q_total.div_ceil(WQ);
    let threads = rayon::current_num_threads().max(1);
    let qsplit = (4 * threads).div_ceil(obs).clamp(1, q_tiles);
    // dWᵀ, [CK, Op]; each task owns whole rows × its o-block columns.
    let mut dwt = vec![0f32; q_total * op];
    let dwp = SyncPtr(dwt.as_mut_ptr());
    (0..obs * qsplit).into_par_iter().for_each(|task| {
        let (ob, part) = (task / qsplit, task % qsplit);
        let (qt0, qt1) = (part * q_tiles / qsplit, (part + 1) * q_tiles / qsplit);
        let ov = (op - ob * WO).min(WO) / 16;
        let mut segs = Vec::new();
        for ni in 0..n {
            let mut l0 = 0;
            while l0 < l {
                let l1 = (l0 + WB).min(l);
                // Row segments of positions l0..l1: (padded base, dYᵀ row, length).
                segs.clear();
                let mut j = l0;
                while j < l1 {
                    let (ti, hi, wi) = (j / (oh * ow), (j / ow) % oh, j % ow);
                    let len = (ow - wi).min(l1 - j);
                    let base = ni * c * plane + (ti * s0 * hp + hi * s1) * wp + wi * s2;
                    segs.push((base, ni * l + j, len));
                    j += len;
                }
                for qt in qt0..qt1 {
                    let q0 = qt * WQ;
                    let nq = WQ.min(q_total - q0);
                    let mut offs = [0usize; WQ];
                    offs[..nq].copy_from_slice(&q_off[q0..q0 + nq]);
                    // SAFETY: every broadcast reads inside `xp` (padded bases plus tap
                    // offsets of existing taps; missing taps reuse offset 0), dYᵀ
                    // reads stay in `dyt`, and this task alone writes rows q0..q0+nq,
                    // columns of block `ob`, of `dwt`.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        let dst = dwp.get().add(q0 * op + ob * WO);
                        let dy0 = dyt.as_ptr().add(ob * WO);
                        let args = (&xp[..], &offs, &segs[..], s2, dy0, op, dst, nq, ni + l0 > 0);
                        match ov {
                            4 => avx512::wtile::<4>(args),
                            3 => avx512::wtile::<3>(args),
                            2 => avx512::wtile::<2>(args),
                            _ => avx512::wtile::<1>(args),
                        }
                    }
                }
                l0 = l1;
            }
        }
    });
    let mut dw = vec![0f32; o * q_total];
    dw.par_chunks_mut(q_total)
        .enumerate()
        .for_each(|(oo, row)| {
            for (q, v) in row.iter_mut().enumerate() {
                *v = dwt[q * op + oo];
            }
        });
    SCRATCH.with(|s| *s.borrow_mut() = (xp, dyt));
    dw
}

thread_local! {
    /// The weight gradient's padded input and `dYᵀ`, kept between calls: tens of MB
    /// freshly allocated per call cost page faults comparable to a small layer's
    /// whole kernel. Taken out during a call, so a nested call just allocates.
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = Default::default();
}

/// Makes `v` exactly `len` long without writing elements it already has (callers
/// overwrite all of them).
fn set_len(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    } else {
        v.truncate(len);
    }
}

/// Inputs of one forward tile run: input, weight, the tile's weight row offsets,
/// weight channel stride, tap tables, the tile.
type TileIn<'a> = (
    &'a [f32],
    &'a [f32],
    &'a [usize; MR],
    usize,
    &'a Taps,
    &'a Tile,
);
/// Shape and destination of one forward tile run: input channels, positions per
/// sample, output rows that exist, first output channel, output.
type TileOut = (usize, usize, usize, usize, *mut f32);

/// Arguments of one weight-gradient tile run: padded input, the tile's tap offsets,
/// the block's row segments, the W stride, `dYᵀ` at the tile's first channel, `dYᵀ` row stride,
/// `dWᵀ` at the tile's first element, taps in the tile, accumulate into `dWᵀ`.
type WTileArgs<'a> = (
    &'a [f32],
    &'a [usize; WQ],
    &'a [(usize, usize, usize)],
    usize,
    *const f32,
    usize,
    *mut f32,
    usize,
    bool,
);

/// Where the vectors of one output tile read and write.
#[derive(Default)]
struct Tile {
    /// Input offset of (n, channel 0, first lane) per vector.
    x_off: [isize; NV],
    /// Output offset of (n, channel 0, first lane) per vector.
    y_off: [usize; NV],
    /// Start of the vector's chunk in `Taps::mask`.
    mask_row: [usize; NV],
    /// Lanes of the vector that exist.
    store: [u16; NV],
    /// Taps some lane of the tile reads inside the input, with their index in the
    /// weight's kernel (reversed for the input gradient).
    active: Vec<(usize, usize)>,
}

/// A raw output pointer tasks share to write disjoint tiles.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: tasks write disjoint output tiles only.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{TileIn, TileOut, WTileArgs, MR, WQ};

    /// One `rows x (V·16)` output tile: `Σ_c Σ_k w[o, c, k] · x[c, l + delta_k]`,
    /// weight (o0 + r, c, k) read at `wrow[r] + c·cstride + kidx(k)`.
    ///
    /// # Safety
    /// AVX-512F must be available; `x`, `w`, `wrow`, `taps` and `tile` must describe the
    /// same geometry; no other thread may write the tile's output elements.
    // Index loops over the register arrays keep the tile's shape visible.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile<const V: usize>(
        (x, w, wrow, cstride, taps, t): TileIn,
        (c, l, rows, o0, y): TileOut,
    ) {
        let kvol = taps.kvol;
        let xb = x.as_ptr();
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        let wr: [*const f32; MR] = std::array::from_fn(|r| w.as_ptr().add(wrow[r]));
        for ci in 0..c {
            let plane = (ci * l) as isize;
            let wc = ci * cstride;
            // The input gradient's weight rows are `O·kvol` apart per channel, a stride
            // the hardware prefetcher does not follow: fetch two channels ahead.
            let ahead = wc + 2 * cstride;
            for r in 0..MR {
                let p = wr[r].wrapping_add(ahead);
                _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(kvol - 1) as *const i8);
            }
            for &(k, ki) in &t.active {
                let wk = wc + ki;
                let d = *taps.delta.get_unchecked(k) + plane;
                let mut xv = [_mm512_setzero_ps(); V];
                for v in 0..V {
                    let m = *taps.mask.get_unchecked(t.mask_row[v] + k);
                    // Masked-off lanes are never read, so the address may be outside.
                    xv[v] = _mm512_maskz_loadu_ps(m, xb.wrapping_offset(t.x_off[v] + d));
                }
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let wv = _mm512_set1_ps(*wr[r].add(wk));
                    for v in 0..V {
                        acc_r[v] = _mm512_fmadd_ps(wv, xv[v], acc_r[v]);
                    }
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate().take(rows) {
            for v in 0..V {
                let dst = y.add(t.y_off[v] + (o0 + r) * l);
                _mm512_mask_storeu_ps(dst, t.store[v], acc_r[v]);
            }
        }
    }
    /// One weight-gradient tile: `dWᵀ[q, o] (+)= Σ_pos x_pad[base + off_q] · dYᵀ[pos, o]`
    /// for `V` vectors of output channels and up to `WQ` taps over one position block.
    ///
    /// # Safety
    /// AVX-512F must be available; the arguments must satisfy [`super::bwd_weight`]'s
    /// invariants (reads in bounds, the `dWᵀ` tile written by this caller only).
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn wtile<const V: usize>(
        (xp, offs, segs, sw, dy0, op, dst, nq, acc_in): WTileArgs,
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; WQ];
        if acc_in {
            for q in 0..nq {
                for v in 0..V {
                    acc[q][v] = _mm512_loadu_ps(dst.add(q * op + v * 16));
                }
            }
        }
        let xb = xp.as_ptr();
        for &(base, row, len) in segs {
            let mut xq = [xb; WQ];
            for q in 0..WQ {
                xq[q] = xb.add(base + offs[q]);
            }
            let mut d = dy0.add(row * op);
            for i in 0..len {
                let mut dv = [_mm512_setzero_ps(); V];
                for v in 0..V {
                    dv[v] = _mm512_loadu_ps(d.add(v * 16));
                }
                for q in 0..WQ {
                    let xv = _mm512_set1_ps(*xq[q].add(i * sw));
                    for v in 0..V {
                        acc[q][v] = _mm512_fmadd_ps(xv, dv[v], acc[q][v]);
                    }
                }
                d = d.add(op);
            }
        }
        for q in 0..nq {
            for v in 0..V {
                _mm512_storeu_ps(dst.add(q * op + v * 16), acc[q][v]);
            }
        }
    }
}
