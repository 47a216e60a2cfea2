//! In-place SGD-with-momentum update for f32 CPU parameters.
//!
//! Composed from candle ops, `g + wd·p`, `m·buf + g` and `p - lr·buf` are six
//! passes over every parameter, each allocating a new tensor, plus the copy of the
//! new value into the parameter; for an 18-layer video ResNet (33M parameters) that
//! is a sizeable part of a CPU training step. These two in-place ops do the same f32
//! arithmetic in the same order (so results are bit-identical to the composed form)
//! in two passes that allocate nothing: the momentum buffer, then the parameter,
//! each updated where it lies.

use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Tensor};
use rayon::prelude::*;

use crate::ops::dispatch::slices;
use crate::ops::profile;
use crate::Result;

const CHUNK: usize = 1 << 15;

/// The contiguous f32 elements of an in-place destination.
fn dst_f32<'a>(
    op: &str,
    dst: &'a mut CpuStorage,
    l: &Layout,
) -> candle_core::Result<&'a mut [f32]> {
    let (CpuStorage::F32(v), Some((a, b))) = (dst, l.contiguous_offsets()) else {
        return Err(candle_core::Error::Msg(format!(
            "{op}: the updated tensor must be contiguous f32"
        )));
    };
    Ok(&mut v[a..b])
}

/// `buf <- momentum·buf + (g + wd·p)`, sources `(g, p)`.
struct Momentum {
    momentum: f32,
    wd: f32,
}

impl InplaceOp3 for Momentum {
    fn name(&self) -> &'static str {
        "vssl-sgd-momentum"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let [g, p] = slices::<f32, 2>(self.name(), [(s1, l1), (s2, l2)])?;
        let (g, p) = (&g[..], &p[..]);
        let buf = dst_f32(self.name(), dst, dst_l)?;
        let (m, wd) = (self.momentum, self.wd);
        // One profile row for all parameters.
        profile::timed(
            "sgd.momentum",
            || "all parameters".into(),
            0.0,
            || {
                buf.par_chunks_mut(CHUNK)
                    .zip(g.par_chunks(CHUNK).zip(p.par_chunks(CHUNK)))
                    .for_each(|(b, (g, p))| {
                        for (b, (g, p)) in b.iter_mut().zip(g.iter().zip(p)) {
                            // Same order as the composed ops: g + p·wd, then buf·m + that.
                            let gi = if wd != 0.0 { *g + *p * wd } else { *g };
                            *b = *b * m + gi;
                        }
                    })
            },
        );
        Ok(())
    }
}

/// `p <- p - d·lr`, source `d`.
struct Step {
    lr: f32,
}

impl InplaceOp2 for Step {
    fn name(&self) -> &'static str {
        "vssl-sgd-step"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        s1: &CpuStorage,
        l1: &Layout,
    ) -> candle_core::Result<()> {
        let [d] = slices::<f32, 1>(self.name(), [(s1, l1)])?;
        let d = &d[..];
        let p = dst_f32(self.name(), dst, dst_l)?;
        let lr = self.lr;
        profile::timed(
            "sgd.step",
            || "all parameters".into(),
            0.0,
            || {
                p.par_chunks_mut(CHUNK)
                    .zip(d.par_chunks(CHUNK))
                    .for_each(|(p, d)| {
                        for (p, d) in p.iter_mut().zip(d) {
                            *p -= *d * lr;
                        }
                    })
            },
        );
        Ok(())
    }
}

/// `buf <- momentum·buf + g + wd·p` in place (f32 CPU tensors, `buf` contiguous).
pub(crate) fn update_momentum(
    buf: &Tensor,
    g: &Tensor,
    p: &Tensor,
    momentum: f64,
    wd: f64,
) -> Result<()> {
    buf.inplace_op3(
        &g.contiguous()?,
        &p.contiguous()?,
        &Momentum {
            momentum: momentum as f32,
            wd: wd as f32,
        },
    )?;
    Ok(())
}

/// `p <- p - lr·d` in place (f32 CPU tensors, `p` contiguous).
pub(crate) fn step_in_place(p: &Tensor, d: &Tensor, lr: f64) -> Result<()> {
    p.inplace_op2(&d.contiguous()?, &Step { lr: lr as f32 })?;
    Ok(())
}
