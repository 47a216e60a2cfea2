//! Pointwise (1x1x1, unpadded) conv3d as plain gemms per sample: the residual
//! networks' downsampling shortcuts.
//!
//! Why it exists: through vol2col/col2vol such a layer copies its input into
//! columns block by block and scatter-adds its input gradient back; at stride 2 the
//! shortcut's input gradient ran at 30-40 GFLOP/s (`vssl bench model` rows). Here
//! the forward and weight gradient read the strided input grid once into a dense
//! `[C, L]` copy (none at stride 1), and the input gradient is one gemm per sample
//! whose result lands on the strided grid of a zeroed `dx`.
//!
//! Determinism: every output element is one gemm dot product over channels (forward,
//! input gradient) or an in-order sum of fixed chunks' gemms (weight gradient),
//! whatever the thread count.

use candle_core::WithDType;
use gemm::Parallelism;
use rayon::prelude::*;

use super::cpu::gemm_raw;
use super::geometry::Geom;
use super::SyncPtr;

/// Whether `g` is pointwise: a 1x1x1 kernel without padding (dilation is moot).
pub(super) fn applies(g: &Geom) -> bool {
    g.k == [1; 3] && g.pad == [0; 3]
}

/// Gemm parallelism: per sample when there are enough samples, else inside.
fn inner(g: &Geom) -> Parallelism {
    if g.n >= rayon::current_num_threads() {
        Parallelism::None
    } else {
        Parallelism::Rayon(rayon::current_num_threads())
    }
}

/// `x` (`[N, C, T, H, W]`) on the output grid, `[N, C, L]`: `x[n, c, t·s0, h·s1,
/// w·s2]`; `None` at stride 1, where `x` already is that.
fn on_grid<T: WithDType>(g: &Geom, x: &[T]) -> Option<Vec<T>> {
    if g.stride == [1; 3] {
        return None;
    }
    let ([_, h, w], [ot, oh, ow], s) = (g.inp, g.out, g.stride);
    let (l, lin) = (g.l(), g.lin());
    let mut xs = vec![T::zero(); g.n * g.c * l];
    xs.par_chunks_mut(l).enumerate().for_each(|(nc, dst)| {
        let src = &x[nc * lin..][..lin];
        for a in 0..ot {
            for b in 0..oh {
                let row = &src[((a * s[0]) * h + b * s[1]) * w..];
                let d = &mut dst[(a * oh + b) * ow..][..ow];
                for (e, v) in d.iter_mut().enumerate() {
                    *v = row[e * s[2]];
                }
            }
        }
    });
    Some(xs)
}

/// `y[n] = W · x[n]` on the output grid, `[N, O, L]`.
pub(super) fn fwd<T: WithDType>(g: &Geom, x: &[T], w: &[T]) -> Vec<T> {
    let xs = on_grid(g, x);
    let xs = xs.as_deref().unwrap_or(x);
    let (c, o, l) = (g.c, g.o, g.l());
    let mut y = vec![T::zero(); g.n * o * l];
    let par = inner(g);
    y.par_chunks_mut(o * l).enumerate().for_each(|(n, yn)| {
        // SAFETY: `yn` is sample n's `[O, L]`; `w` is `[O, C]`, `xs[n]` `[C, L]`.
        unsafe {
            gemm_raw(
                (o, l, c),
                yn.as_mut_ptr(),
                l,
                w.as_ptr(),
                (c, 1),
                xs[n * c * l..].as_ptr(),
                (l, 1),
                false,
                par,
            )
        }
    });
    y
}

/// `dx`, `[N, C, T, H, W]`: `Wᵀ · dy[n]` on the strided grid, zero elsewhere.
pub(super) fn bwd_input<T: WithDType>(g: &Geom, dy: &[T], w: &[T]) -> Vec<T> {
    let (c, o, l) = (g.c, g.o, g.l());
    let dense = g.stride == [1; 3];
    // At stride 1 the products are dx itself; else they are scattered below.
    let mut z = vec![T::zero(); g.n * c * l];
    let par = inner(g);
    z.par_chunks_mut(c * l).enumerate().for_each(|(n, zn)| {
        // SAFETY: `zn` is sample n's `[C, L]`; Wᵀ is `w` read with strides (1, C).
        unsafe {
            gemm_raw(
                (c, l, o),
                zn.as_mut_ptr(),
                l,
                w.as_ptr(),
                (1, c),
                dy[n * o * l..].as_ptr(),
                (l, 1),
                false,
                par,
            )
        }
    });
    if dense {
        return z;
    }
    let ([_, h, wd], [ot, oh, ow], s) = (g.inp, g.out, g.stride);
    let lin = g.lin();
    let mut dx = vec![T::zero(); g.n * c * lin];
    let dxp = SyncPtr(dx.as_mut_ptr());
    z.par_chunks(l).enumerate().for_each(|(nc, zr)| {
        let base = nc * lin;
        for a in 0..ot {
            for b in 0..oh {
                let row = base + ((a * s[0]) * h + b * s[1]) * wd;
                let src = &zr[(a * oh + b) * ow..][..ow];
                for (e, v) in src.iter().enumerate() {
                    // SAFETY: channel row `nc` of dx is this task's only.
                    unsafe { *dxp.get().add(row + e * s[2]) = *v };
                }
            }
        }
    });
    dx
}

/// `dW = Σ_n dy[n] · x[n]ᵀ` on the output grid, `[O, C]`. The work goes in fixed
/// parts of about `DW_CHUNK` positions (chunks of one sample's positions, or runs of
/// whole samples when a sample has fewer), each part's gemms accumulating into its
/// own partial sum; parts run in parallel (an `[O, C]` result with a long reduction
/// gives the gemm itself little to split) and are added in order, so the result
/// does not depend on the thread count.
pub(super) fn bwd_weight<T: WithDType>(g: &Geom, x: &[T], dy: &[T]) -> Vec<T> {
    let xs = on_grid(g, x);
    let xs = xs.as_deref().unwrap_or(x);
    let (c, o, l) = (g.c, g.o, g.l());
    // (first sample, samples, first position, positions) per part.
    let parts: Vec<(usize, usize, usize, usize)> = if l >= DW_CHUNK {
        let per = l.div_ceil(DW_CHUNK);
        (0..g.n * per)
            .map(|k| {
                let l0 = (k % per) * DW_CHUNK;
                (k / per, 1, l0, DW_CHUNK.min(l - l0))
            })
            .collect()
    } else {
        let spp = DW_CHUNK / l;
        (0..g.n)
            .step_by(spp)
            .map(|n0| (n0, spp.min(g.n - n0), 0, l))
            .collect()
    };
    let par = if parts.len() >= rayon::current_num_threads() {
        Parallelism::None
    } else {
        Parallelism::Rayon(rayon::current_num_threads())
    };
    let mut partial = vec![T::zero(); parts.len() * o * c];
    partial
        .par_chunks_mut(o * c)
        .zip(&parts)
        .for_each(|(d, &(n0, ns, l0, len))| {
            for n in n0..n0 + ns {
                // SAFETY: `d` is this part's `[O, C]`; dy[n] is `[O, L]` and x[n]ᵀ is
                // `xs[n]` read with strides (1, L), both from position `l0`.
                unsafe {
                    gemm_raw(
                        (o, c, len),
                        d.as_mut_ptr(),
                        c,
                        dy[n * o * l + l0..].as_ptr(),
                        (l, 1),
                        xs[n * c * l + l0..].as_ptr(),
                        (1, l),
                        n > n0,
                        par,
                    )
                }
            }
        });
    let (first, rest) = partial.split_at(o * c);
    let mut dw = first.to_vec();
    dw.par_chunks_mut(4096).enumerate().for_each(|(i, d)| {
        for part in rest.chunks_exact(o * c) {
            for (v, p) in d.iter_mut().zip(&part[i * 4096..]) {
                *v += *p;
            }
        }
    });
    dw
}

/// Output positions per weight-gradient part.
const DW_CHUNK: usize = 2048;
