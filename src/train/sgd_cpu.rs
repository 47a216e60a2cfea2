//! One-pass SGD-with-momentum update for f32 CPU parameters.
//!
//! Composed from candle ops, `g + wd·p`, `m·buf + g` and `p - lr·buf` are six
//! passes over every parameter, each allocating a new tensor; for an 18-layer video
//! ResNet (33M parameters) that is a sizeable part of a CPU training step. These two
//! custom ops do the same f32 arithmetic in the same order (so results are
//! bit-identical to the composed form) in two passes.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::dispatch::slices;
use crate::ops::profile;
use crate::Result;

const CHUNK: usize = 1 << 15;

/// `(buf, g, p) -> momentum·buf + (g + wd·p)`.
struct Momentum {
    momentum: f32,
    wd: f32,
}

impl CustomOp3 for Momentum {
    fn name(&self) -> &'static str {
        "vssl-sgd-momentum"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let [buf, g, p] = slices::<f32, 3>(self.name(), [(s1, l1), (s2, l2), (s3, l3)])?;
        let (buf, g, p) = (&buf[..], &g[..], &p[..]);
        let (m, wd) = (self.momentum, self.wd);
        // One profile row for all parameters.
        let out = profile::timed(
            "sgd.momentum",
            || "all parameters".into(),
            0.0,
            || {
                let mut out = vec![0f32; buf.len()];
                out.par_chunks_mut(CHUNK)
                    .zip(buf.par_chunks(CHUNK))
                    .zip(g.par_chunks(CHUNK).zip(p.par_chunks(CHUNK)))
                    .for_each(|((o, b), (g, p))| {
                        for ((o, b), (g, p)) in o.iter_mut().zip(b).zip(g.iter().zip(p)) {
                            // Same order as the composed ops: g + p·wd, then buf·m + that.
                            let gi = if wd != 0.0 { *g + *p * wd } else { *g };
                            *o = *b * m + gi;
                        }
                    });
                out
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `(p, d) -> p - d·lr`.
struct Step {
    lr: f32,
}

impl CustomOp2 for Step {
    fn name(&self) -> &'static str {
        "vssl-sgd-step"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let [p, d] = slices::<f32, 2>(self.name(), [(s1, l1), (s2, l2)])?;
        let (p, d) = (&p[..], &d[..]);
        let lr = self.lr;
        let out = profile::timed(
            "sgd.step",
            || "all parameters".into(),
            0.0,
            || {
                let mut out = vec![0f32; p.len()];
                out.par_chunks_mut(CHUNK)
                    .zip(p.par_chunks(CHUNK).zip(d.par_chunks(CHUNK)))
                    .for_each(|(o, (p, d))| {
                        for (o, (p, d)) in o.iter_mut().zip(p.iter().zip(d)) {
                            *o = *p - *d * lr;
                        }
                    });
                out
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// The new momentum buffer `momentum·buf + g + wd·p` (f32 CPU tensors).
pub(crate) fn momentum_buffer(
    buf: &Tensor,
    g: &Tensor,
    p: &Tensor,
    momentum: f64,
    wd: f64,
) -> Result<Tensor> {
    Ok(buf.contiguous()?.apply_op3_no_bwd(
        &g.contiguous()?,
        &p.contiguous()?,
        &Momentum {
            momentum: momentum as f32,
            wd: wd as f32,
        },
    )?)
}

/// `p - lr·d` (f32 CPU tensors).
pub(crate) fn step(p: &Tensor, d: &Tensor, lr: f64) -> Result<Tensor> {
    Ok(p.contiguous()?
        .apply_op2_no_bwd(&d.contiguous()?, &Step { lr: lr as f32 })?)
}
