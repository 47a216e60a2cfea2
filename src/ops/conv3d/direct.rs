//! AVX-512 direct conv3d kernels: forward of nearly every geometry, input gradient of
//! "same" stride-1 convolutions, weight gradient of any geometry with output rows at
//! least 16 wide.
//!
//! Why it exists: R3D-18, R(2+1)D and C3D spend most of a training step in stride-1
//! convolutions with "same" padding (3x3x3, 1x3x3, 3x1x1), forward and input gradient.
//! On that geometry output position `l` of a sample reads input position
//! `l + delta(tap)` of every channel, so a 16-position vector of one tap is a single
//! masked unaligned load straight from the input: no im2col/vol2col buffer, no
//! packing, and the whole `C·taps` reduction of an 8-channel x 32-position output tile
//! stays in 16 zmm registers. A strided input is first split into its stride phases
//! laid out on the output grid, which turns its taps into such offsets too. The
//! input gradient is the same kernel on dY with negated offsets and the transposed
//! weight. The weight gradient ([`bwd_weight`]) broadcasts from a zero-padded input
//! instead. The blocked vol2col+gemm path reached 110-160 GFLOP/s on these layers;
//! these kernels reach 175-210 of the machine's ~230 (`experiments/perf-cpu.md`).
//!
//! Lanes whose tap falls into padding (or past the sample's end) are masked off;
//! AVX-512 masked loads do not touch masked-off lanes, so their addresses may lie
//! outside the input. Each output element is summed in the same order whatever the
//! thread count, so results are deterministic.
// Elsewhere than x86-64 `applies` is false and the kernels are never called.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_variables))]

use rayon::prelude::*;

use super::geometry::Geom;
use super::{scratch, SyncPtr};

/// Output channels per register tile (broadcast operand).
const MR: usize = 8;
/// 16-lane vectors of output positions per register tile.
const NV: usize = 2;

/// Whether [`bwd_weight`] handles `g` (any strides, padding, dilation): output rows
/// shorter than 16 positions leave its register tile too little work per row
/// (measured slower than vol2col+gemm on the 8- and 4-wide maps of R3D-18's deeper
/// layers at 64 px).
pub(super) fn applies_weight(g: &Geom) -> bool {
    g.out[2] >= 16 && enabled()
}

/// AVX-512F present and the direct kernels not switched off (`super::algo`).
fn enabled() -> bool {
    super::algo::direct_allowed()
}

/// One tap of a convolution evaluated on a fixed output grid: where it reads relative
/// to an output position, where that read is valid, and which weight it multiplies.
#[derive(Clone, Copy)]
struct Tap {
    /// Offset of the tap's input plane within a channel (a phase of a strided input).
    plane: usize,
    /// Offset on each axis of the grid.
    off: [isize; 3],
    /// Valid input extent on each axis (reads at `pos + off` outside `0..ext` are padding).
    ext: [usize; 3],
    /// Index of the tap in the weight's flattened kernel.
    kidx: usize,
}

/// The per-call tables of a tap list on a grid: input offset of each tap and, per
/// 16-lane chunk of a sample, the lanes each tap may read.
struct Taps {
    /// Offset (in elements, within one input channel) of tap `k` relative to `l`.
    delta: Vec<isize>,
    /// `mask[chunk * kvol + k]`: lanes of `chunk` whose tap `k` lies inside the input.
    mask: Vec<u16>,
    /// Lanes of `chunk` that exist (`l < L`).
    store: Vec<u16>,
    /// Kernel index of each tap.
    kidx: Vec<usize>,
    /// Taps in the list.
    kvol: usize,
    /// Taps of the whole weight kernel (the weight's per-channel extent).
    wkvol: usize,
}

impl Taps {
    fn new(grid: [usize; 3], taps: &[Tap], wkvol: usize) -> Self {
        let [t, h, w] = grid;
        let kvol = taps.len();
        let l = t * h * w;
        let chunks = l.div_ceil(16);
        let delta = taps
            .iter()
            .map(|tp| {
                tp.plane as isize + (tp.off[0] * h as isize + tp.off[1]) * w as isize + tp.off[2]
            })
            .collect();
        let inside = |p: usize, off: isize, ext: usize| {
            let v = p as isize + off;
            v >= 0 && (v as usize) < ext
        };
        let mut mask = vec![0u16; chunks * kvol];
        let mut store = vec![0u16; chunks];
        for pos in 0..l {
            let (ci, lane) = (pos / 16, pos % 16);
            store[ci] |= 1 << lane;
            let p = [pos / (h * w), (pos / w) % h, pos % w];
            for (k, tp) in taps.iter().enumerate() {
                if (0..3).all(|ax| inside(p[ax], tp.off[ax], tp.ext[ax])) {
                    mask[ci * kvol + k] |= 1 << lane;
                }
            }
        }
        Self {
            delta,
            mask,
            store,
            kidx: taps.iter().map(|tp| tp.kidx).collect(),
            kvol,
            wkvol,
        }
    }
}

/// Whether [`fwd`] handles `g`: every axis must satisfy `ceil(inp / stride) <= out`,
/// so each stride phase of the input fits the output grid (all R3D-18 / R(2+1)D / C3D
/// convolutions do, the strided ones and the stem included). Strided 1x1x1 shortcuts
/// stay on the blocked path: splitting their input costs more than their one tap.
pub(super) fn applies(g: &Geom) -> bool {
    let phases_fit = (0..3).all(|ax| g.inp[ax].div_ceil(g.stride[ax]) <= g.out[ax]);
    phases_fit && (same_grid(g) || g.kvol() > 1) && enabled()
}

/// Whether [`bwd_input`] handles `g`: "same" stride-1 convolutions. (Strided input
/// gradients, one direct run per input phase, measured slower than col2vol.)
pub(super) fn applies_input_grad(g: &Geom) -> bool {
    same_grid(g) && enabled()
}

/// Stride 1 with the output grid equal to the input grid.
fn same_grid(g: &Geom) -> bool {
    g.stride == [1; 3] && g.out == g.inp
}

/// Kernel tap `(a, b, e)` of `g`: its stride phase on each axis and its offset on the
/// output grid (input index `o·s + k·d - p = (o + off)·s + phase`).
fn tap_geometry(g: &Geom, k: [usize; 3]) -> ([usize; 3], [isize; 3]) {
    let mut phase = [0; 3];
    let mut off = [0; 3];
    for ax in 0..3 {
        let v = (k[ax] * g.dil[ax]) as isize - g.pad[ax] as isize;
        let s = g.stride[ax] as isize;
        off[ax] = v.div_euclid(s);
        phase[ax] = v.rem_euclid(s) as usize;
    }
    (phase, off)
}

/// The kernel taps of `g` in weight order, as `(a, b, e)`.
fn kernel_taps(g: &Geom) -> Vec<[usize; 3]> {
    let [k0, k1, k2] = g.k;
    (0..k0 * k1 * k2)
        .map(|k| [k / (k1 * k2), (k / k2) % k1, k % k2])
        .collect()
}

/// Phases of a strided input (one for stride 1).
fn phases(g: &Geom) -> usize {
    g.stride.iter().product()
}

/// Flattened phase index.
fn phase_index(g: &Geom, p: [usize; 3]) -> usize {
    (p[0] * g.stride[1] + p[1]) * g.stride[2] + p[2]
}

/// Valid extent of phase `p` on each axis: the input positions `i ≡ p (mod s)`.
fn phase_ext(g: &Geom, p: [usize; 3]) -> [usize; 3] {
    std::array::from_fn(|ax| (g.inp[ax] - p[ax].min(g.inp[ax])).div_ceil(g.stride[ax]))
}

/// `y = conv(x, w)` for a geometry where [`applies`] holds; `[N, O, T', H', W']`.
///
/// A strided input is first split into its stride phases, each laid out on the output
/// grid (`[N, C, phases, T', H', W']`), which turns every tap into a fixed offset on
/// that grid; "same" stride-1 convolutions read `x` as it is.
pub(super) fn fwd(g: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
    let l = g.l();
    let direct_grid = same_grid(g);
    let np = if direct_grid { 1 } else { phases(g) };
    let kvol = g.kvol();
    let mut used = vec![false; np];
    for k in kernel_taps(g) {
        used[phase_index(g, tap_geometry(g, k).0)] = true;
    }
    let split;
    let xin = if direct_grid {
        x
    } else {
        split = phase_split(g, x, &used);
        &split[..]
    };
    let taps: Vec<Tap> = kernel_taps(g)
        .into_iter()
        .enumerate()
        .map(|(kidx, k)| {
            let (phase, off) = tap_geometry(g, k);
            let (plane, ext) = if direct_grid {
                (0, g.inp)
            } else {
                (phase_index(g, phase) * l, phase_ext(g, phase))
            };
            Tap {
                plane,
                off,
                ext,
                kidx,
            }
        })
        .collect();
    let taps = Taps::new(g.out, &taps, kvol);
    let xs = Strides {
        channel: np * l,
        sample: g.c * np * l,
    };
    // Weight (o, c, k) at o·C·kvol + c·kvol + k.
    let ws = Strides {
        channel: kvol,
        sample: g.c * kvol,
    };
    run(g.n, l, &taps, xin, xs, g.c, w, ws, g.o)
}

/// `dx` (`[N, C, T, H, W]`) for a geometry where [`applies_input_grad`] holds: a
/// convolution of `dY` with every tap's offset negated and the weight transposed.
pub(super) fn bwd_input(g: &Geom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let (l, kvol) = (g.l(), g.kvol());
    let list: Vec<Tap> = kernel_taps(g)
        .into_iter()
        .enumerate()
        .map(|(kidx, k)| Tap {
            plane: 0,
            off: tap_geometry(g, k).1.map(|v| -v),
            ext: g.out,
            kidx,
        })
        .collect();
    let taps = Taps::new(g.inp, &list, kvol);
    // Weight (o, c, k) as (row c, channel o): rows kvol apart, channels C·kvol apart.
    let ws = Strides {
        channel: g.c * kvol,
        sample: kvol,
    };
    let ys = Strides {
        channel: l,
        sample: g.o * l,
    };
    run(g.n, l, &taps, dy, ys, g.o, w, ws, g.c)
}

/// Element strides of a tensor read by [`run`]: between channels, between samples (for
/// weights: between reduction channels, between output rows).
#[derive(Clone, Copy)]
struct Strides {
    channel: usize,
    sample: usize,
}

/// `x` split into the stride phases `used` on the output grid, `[N, C, phases, T', H',
/// W']` (other phases and slots past a phase's extent are zero and never read).
fn phase_split(g: &Geom, x: &[f32], used: &[bool]) -> Vec<f32> {
    let (l, lin, np) = (g.l(), g.lin(), phases(g));
    let [t, h, w] = g.inp;
    let [_, oh, ow] = g.out;
    let [s0, s1, s2] = g.stride;
    let mut out = vec![0f32; g.n * g.c * np * l];
    out.par_chunks_mut(np * l)
        .enumerate()
        .for_each(|(nc, dst)| {
            let src = &x[nc * lin..][..lin];
            for ti in 0..t {
                for hi in 0..h {
                    let row = &src[(ti * h + hi) * w..][..w];
                    let base = ((ti / s0) * oh + hi / s1) * ow;
                    // A row narrower than the stride has no columns in its later phases.
                    for p2 in 0..s2.min(w) {
                        let p = ((ti % s0) * s1 + hi % s1) * s2 + p2;
                        if !used[p] {
                            continue;
                        }
                        let d = &mut dst[p * l + base..][..ow];
                        for (d, v) in d.iter_mut().zip(row[p2..].iter().step_by(s2)) {
                            *d = *v;
                        }
                    }
                }
            }
        });
    out
}

/// `y[n, o, l] = Σ_c Σ_taps w(o, c, kidx) · x[n, c, l + delta]` on a grid of `l`
/// positions per sample, `o` output rows; `[N, rows, L]`.
#[allow(clippy::too_many_arguments)]
fn run(
    n: usize,
    l: usize,
    taps: &Taps,
    x: &[f32],
    xs: Strides,
    c: usize,
    w: &[f32],
    ws: Strides,
    o: usize,
) -> Vec<f32> {
    let kvol = taps.kvol;
    let obs = o.div_ceil(MR);
    let cps = l.div_ceil(16);
    let chunks = n * cps;
    let groups = chunks.div_ceil(NV);
    // Enough tasks for both cores even when the maps are tiny (deep layers): split
    // the output channels too.
    let threads = rayon::current_num_threads().max(1);
    let osplit = (16 * threads).div_ceil(groups).clamp(1, obs);
    // Filled through its spare capacity: the tiles below store every (n, o, l)
    // element exactly once (all rows of every 16-position chunk), so no zeroing pass.
    let len = n * o * l;
    let mut y: Vec<f32> = Vec::with_capacity(len);
    let yp = SyncPtr(y.spare_capacity_mut().as_mut_ptr() as *mut f32);
    (0..groups * osplit).into_par_iter().for_each(|task| {
        let (grp, part) = (task / osplit, task % osplit);
        let (ob0, ob1) = (part * obs / osplit, (part + 1) * obs / osplit);
        let first = grp * NV;
        let nv = NV.min(chunks - first);
        let mut tile = Tile::default();
        for v in 0..nv {
            let (ni, ci) = ((first + v) / cps, (first + v) % cps);
            tile.x_off[v] = (ni * xs.sample + ci * 16) as isize;
            tile.y_off[v] = ni * o * l + ci * 16;
            tile.mask_row[v] = ci * kvol;
            tile.store[v] = taps.store[ci];
        }
        // Taps that read padding in every lane of the tile (a whole T or H border,
        // common in deep layers with T = 1 or 2) are skipped.
        tile.active.clear();
        tile.active.extend(
            (0..kvol)
                .filter(|&k| (0..nv).any(|v| taps.mask[tile.mask_row[v] + k] != 0))
                .map(|k| (k, taps.kidx[k])),
        );
        for ob in ob0..ob1 {
            let rows = MR.min(o - ob * MR);
            // Rows past O reuse row 0 (results discarded).
            let wrow: [usize; MR] = std::array::from_fn(|r| {
                if r < rows {
                    (ob * MR + r) * ws.sample
                } else {
                    0
                }
            });
            // SAFETY: loads are masked to lanes inside `x` (see `Taps`), weight reads
            // are in bounds by the strides above, stores are masked to this task's
            // disjoint output tile.
            unsafe {
                #[cfg(target_arch = "x86_64")]
                {
                    let args = (x, w, &wrow, ws.channel, taps, &tile);
                    let out = (c, xs.channel, l, rows, ob * MR, yp.get());
                    match nv {
                        2 => avx512::tile::<2>(args, out),
                        _ => avx512::tile::<1>(args, out),
                    }
                }
            }
        }
    });
    // SAFETY: every element was written above (see the allocation).
    unsafe { y.set_len(len) };
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
    scratch(&mut xp, n * c * plane)
        .par_chunks_mut(plane)
        .enumerate()
        .for_each(|(nc, dst)| {
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
    scratch(&mut dyt, n * l * op)
        .par_chunks_mut(64 * op)
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
/// Shape and destination of one forward tile run: input channels, input channel
/// stride, positions per sample, output rows that exist, first output row, output.
type TileOut = (usize, usize, usize, usize, usize, *mut f32);

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
    /// weight's kernel.
    active: Vec<(usize, usize)>,
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
        (c, xcs, l, rows, o0, y): TileOut,
    ) {
        let wkvol = taps.wkvol;
        let xb = x.as_ptr();
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        let wr: [*const f32; MR] = std::array::from_fn(|r| w.as_ptr().add(wrow[r]));
        for ci in 0..c {
            let plane = (ci * xcs) as isize;
            let wc = ci * cstride;
            // The input gradient's weight rows are `O·kvol` apart per channel, a stride
            // the hardware prefetcher does not follow: fetch two channels ahead.
            let ahead = wc + 2 * cstride;
            for r in 0..MR {
                let p = wr[r].wrapping_add(ahead);
                _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(wkvol - 1) as *const i8);
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
