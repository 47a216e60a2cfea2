//! Gradients of convolutions whose kernel has taps that only ever read padding,
//! computed on the kernel without them.
//!
//! Why it exists: deep layers of a small clip often have one or two frames, where a
//! 3x3x3 kernel with temporal padding 1 is really 1x3x3 (R3D-18's layer 4 at 64 px:
//! 512 channels, 1x4x4). The forward kernels skip such taps already, but the input
//! gradient still streams the whole weight (three times the live part) and the
//! weight gradient computes zeros for two thirds of its columns: 12 and 22 ms per
//! call against 4 and 5 on the trimmed kernel. Here the input gradient runs on the
//! live taps' weights, and the weight gradient computes the live taps' columns and
//! leaves the others zero (what they are: a dead tap multiplies only padding).
//! Sums over the live taps are the same terms as before without the zero ones, in
//! whatever fixed order the kernel that runs the trimmed layer uses, so results
//! stay deterministic.

use candle_core::WithDType;
use rayon::prelude::*;

use super::geometry::Geom;

/// The live part of a kernel: the trimmed geometry and where its taps start in the
/// full kernel.
pub(super) struct Trim {
    pub(super) g: Geom,
    lo: [usize; 3],
}

/// Whether tap `t` on axis `a` of `g` reads inside the input for some output position.
fn live(g: &Geom, a: usize, t: usize) -> bool {
    (0..g.out[a]).any(|o| {
        let i = (o * g.stride[a] + t * g.dil[a]) as isize - g.pad[a] as isize;
        i >= 0 && (i as usize) < g.inp[a]
    })
}

impl Trim {
    /// `g` without its dead taps, if it has any and the trimmed kernel (symmetric
    /// padding, as every geometry here has) keeps the same outputs.
    pub(super) fn of(g: &Geom) -> Option<Self> {
        let (mut k, mut pad, mut lo) = (g.k, g.pad, [0; 3]);
        for a in 0..3 {
            let first = (0..g.k[a]).find(|&t| live(g, a, t))?;
            let last = (0..g.k[a]).rev().find(|&t| live(g, a, t))?;
            if first * g.dil[a] > g.pad[a] {
                return None;
            }
            lo[a] = first;
            k[a] = last - first + 1;
            pad[a] = g.pad[a] - first * g.dil[a];
            let span = g.dil[a] * (k[a] - 1) + 1;
            let padded = g.inp[a] + 2 * pad[a];
            if padded < span || (padded - span) / g.stride[a] + 1 != g.out[a] {
                return None;
            }
        }
        (k != g.k).then_some(Self {
            g: Geom { k, pad, ..*g },
            lo,
        })
    }

    /// Where each run of `k[2]` consecutive live taps sits within one `(o, c)`
    /// kernel: its offset in the full kernel and in the trimmed one.
    fn runs(&self, full: &Geom) -> Vec<(usize, usize)> {
        let ([_, k1, k2], [n0, n1, n2]) = (full.k, self.g.k);
        let [l0, l1, l2] = self.lo;
        (0..n0 * n1)
            .map(|r| {
                let (a, b) = (r / n1, r % n1);
                (((a + l0) * k1 + b + l1) * k2 + l2, r * n2)
            })
            .collect()
    }

    /// The live taps of a full `[O, C, k]` weight, as the trimmed layer's weight.
    pub(super) fn weight<T: WithDType>(&self, full: &Geom, w: &[T]) -> Vec<T> {
        let (runs, n2) = (self.runs(full), self.g.k[2]);
        let (kv, nv) = (full.kvol(), self.g.kvol());
        let mut out = vec![T::zero(); full.o * full.c * nv];
        out.par_chunks_mut(full.c * nv)
            .zip(w.par_chunks(full.c * kv))
            .for_each(|(dst, src)| {
                for (d, s) in dst.chunks_mut(nv).zip(src.chunks(kv)) {
                    for &(f, t) in &runs {
                        d[t..t + n2].copy_from_slice(&s[f..f + n2]);
                    }
                }
            });
        out
    }

    /// A trimmed weight gradient placed into the full kernel (dead taps zero). The
    /// full gradient (up to three times the trimmed one, 28 MB for R3D-18's layer 4)
    /// is written in one pass, each `(o, c)` kernel zeroed and filled while in cache.
    pub(super) fn widen<T: WithDType>(&self, full: &Geom, dw: &[T]) -> Vec<T> {
        let (runs, n2) = (self.runs(full), self.g.k[2]);
        let (kv, nv) = (full.kvol(), self.g.kvol());
        let len = full.o * full.c * kv;
        let mut out: Vec<T> = Vec::with_capacity(len);
        out.spare_capacity_mut()[..len]
            .par_chunks_mut(full.c * kv)
            .zip(dw.par_chunks(full.c * nv))
            .for_each(|(dst, src)| {
                for (d, s) in dst.chunks_mut(kv).zip(src.chunks(nv)) {
                    for v in d.iter_mut() {
                        v.write(T::zero());
                    }
                    for &(f, t) in &runs {
                        for (v, x) in d[f..f + n2].iter_mut().zip(&s[t..t + n2]) {
                            v.write(*x);
                        }
                    }
                }
            });
        // SAFETY: every one of the `len` elements was written above.
        unsafe { out.set_len(len) };
        out
    }
}
