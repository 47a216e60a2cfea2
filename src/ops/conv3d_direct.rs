//! AVX-512 direct kernel for "same" stride-1 conv3d (output grid == input grid).
//!
//! Why it exists: R3D-18, R(2+1)D and C3D spend most of a training step in stride-1
//! convolutions with "same" padding (3x3x3, 1x3x3, 3x1x1), forward and input gradient
//! (which [`super::conv3d_cpu::bwd_input`] runs as such a convolution with the flipped
//! kernel). On that geometry output position `l` of a sample reads input position
//! `l + delta(tap)` of every channel, so a 16-position vector of one tap is a single
//! masked unaligned load straight from the input: no im2col/vol2col buffer, no
//! packing of the input, and the whole `C·taps` reduction of an 8-channel x 48-position
//! output tile stays in 24 zmm registers. The blocked vol2col+gemm path reached
//! 110-160 GFLOP/s on these layers; this kernel is measured in `experiments/perf-cpu.md`.
//!
//! Lanes whose tap falls into padding (or past the sample's end) are masked off;
//! AVX-512 masked loads do not touch masked-off lanes, so their addresses may lie
//! outside the input. Each output element is summed in the same order (channel, then
//! tap) whatever the thread count, so results are deterministic.

use rayon::prelude::*;

use super::conv3d::Geom;

/// Output channels per register tile (broadcast operand).
const MR: usize = 8;
/// 16-lane vectors of output positions per register tile.
const NV: usize = 3;

/// Whether the direct kernel handles `g` on this machine (f32 callers only).
pub(super) fn applies(g: &Geom) -> bool {
    g.stride == [1; 3] && g.out == g.inp && enabled()
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
    // wp[ob][c][k][r] = w[ob·MR + r][c][k] (or the flipped transpose), zero rows past O.
    let mut wp = vec![0f32; obs * c * kvol * MR];
    wp.par_chunks_mut(c * kvol * MR)
        .enumerate()
        .for_each(|(ob, dst)| {
            let rows = MR.min(o - ob * MR);
            // Loops ordered so both layouts read `w` in contiguous runs.
            for ci in 0..c {
                let d = &mut dst[ci * kvol * MR..][..kvol * MR];
                for r in 0..rows {
                    let oo = ob * MR + r;
                    if flipped {
                        let src = &w[(ci * o + oo) * kvol..][..kvol];
                        for (k, v) in src.iter().rev().enumerate() {
                            d[k * MR + r] = *v;
                        }
                    } else {
                        let src = &w[(oo * c + ci) * kvol..][..kvol];
                        for (k, v) in src.iter().enumerate() {
                            d[k * MR + r] = *v;
                        }
                    }
                }
            }
        });
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
        for ob in ob0..ob1 {
            let rows = MR.min(o - ob * MR);
            let wob = &wp[ob * c * kvol * MR..][..c * kvol * MR];
            // SAFETY: loads are masked to lanes inside `x` (see `Taps`), weight reads
            // stay in `wob`, stores are masked to this task's disjoint output tile.
            unsafe {
                #[cfg(target_arch = "x86_64")]
                match nv {
                    3 => avx512::tile::<3>(x, wob, &taps, &tile, c, l, rows, ob * MR, yp.get()),
                    2 => avx512::tile::<2>(x, wob, &taps, &tile, c, l, rows, ob * MR, yp.get()),
                    _ => avx512::tile::<1>(x, wob, &taps, &tile, c, l, rows, ob * MR, yp.get()),
                }
            }
        }
    });
    y
}

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

    use super::{Taps, Tile, MR};

    /// One `rows x (V·16)` output tile: `Σ_c Σ_k w[o, c, k] · x[c, l + delta_k]`.
    ///
    /// # Safety
    /// AVX-512F must be available; `x`, `wob`, `taps` and `tile` must describe the
    /// same geometry; no other thread may write the tile's output elements.
    // Index loops over the register arrays keep the tile's shape visible.
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile<const V: usize>(
        x: &[f32],
        wob: &[f32],
        taps: &Taps,
        t: &Tile,
        c: usize,
        l: usize,
        rows: usize,
        o0: usize,
        y: *mut f32,
    ) {
        let kvol = taps.kvol;
        let xb = x.as_ptr();
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        let mut wq = wob.as_ptr();
        for ci in 0..c {
            let plane = (ci * l) as isize;
            for k in 0..kvol {
                let d = *taps.delta.get_unchecked(k) + plane;
                let mut xv = [_mm512_setzero_ps(); V];
                for v in 0..V {
                    let m = *taps.mask.get_unchecked(t.mask_row[v] + k);
                    // Masked-off lanes are never read, so the address may be outside.
                    xv[v] = _mm512_maskz_loadu_ps(m, xb.wrapping_offset(t.x_off[v] + d));
                }
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let wv = _mm512_set1_ps(*wq.add(r));
                    for v in 0..V {
                        acc_r[v] = _mm512_fmadd_ps(wv, xv[v], acc_r[v]);
                    }
                }
                wq = wq.add(MR);
            }
        }
        for (r, acc_r) in acc.iter().enumerate().take(rows) {
            for v in 0..V {
                let dst = y.add(t.y_off[v] + (o0 + r) * l);
                _mm512_mask_storeu_ps(dst, t.store[v], acc_r[v]);
            }
        }
    }
}
