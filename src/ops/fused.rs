//! Fused element-wise tails: `relu(a + b)`, the end of every residual block.
//!
//! candle runs `(a + b).relu()` as two passes with two allocations and its backward
//! as several more (a mask, a multiply, two gradient copies). On CPU this is one
//! custom op whose backward is a single masked copy shared by both inputs; other
//! devices use the candle ops.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::dispatch::{cpu_float, dispatch, FloatKernel};
use super::op_error;
use crate::Result;

/// `relu(a + b)` for tensors of equal shape.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dims() != b.dims() || a.dtype() != b.dtype() {
        return Err(op_error(
            "add_relu",
            format!(
                "operands differ: {:?} {:?} and {:?} {:?}",
                a.dims(),
                a.dtype(),
                b.dims(),
                b.dtype()
            ),
        ));
    }
    if cpu_float(a) {
        return Ok(a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)?);
    }
    Ok((a + b)?.relu()?)
}

/// Rows per parallel task (large enough to amortise scheduling).
const CHUNK: usize = 1 << 14;

struct AddRelu;

fn add_relu_kernel<T: WithDType>(a: &[T], b: &[T]) -> Vec<T> {
    let mut y = vec![T::zero(); a.len()];
    let zero = T::zero();
    y.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(y, (a, b))| {
            for ((y, a), b) in y.iter_mut().zip(a).zip(b) {
                let v = *a + *b;
                *y = if v > zero { v } else { zero };
            }
        });
    y
}

/// Runs an element-wise binary kernel on two CPU storages of the same float dtype
/// (f32 or f64), output shaped like the first.
fn binary_cpu(
    name: &'static str,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    kernel: &impl FloatKernel<2>,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let out = super::profile::timed(
        name,
        || format!("{:?}", l1.dims()),
        0.0,
        || dispatch(name, [(s1, l1), (s2, l2)], kernel),
    )?;
    Ok((out, l1.shape().clone()))
}

impl FloatKernel<2> for AddRelu {
    fn run<T: WithDType>(&self, [a, b]: [&[T]; 2]) -> Vec<T> {
        add_relu_kernel(a, b)
    }
}

impl FloatKernel<2> for ReluMask {
    fn run<T: WithDType>(&self, [dy, y]: [&[T]; 2]) -> Vec<T> {
        mask_kernel(dy, y)
    }
}

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "vssl-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        binary_cpu(self.name(), (s1, l1), (s2, l2), self)
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = dy.contiguous()?.apply_op2_no_bwd(res, &ReluMask)?;
        Ok((Some(g.clone()), Some(g)))
    }
}

/// `(dy, y) -> dy · [y > 0]`.
struct ReluMask;

pub(super) fn mask_kernel<T: WithDType>(dy: &[T], y: &[T]) -> Vec<T> {
    let mut g = vec![T::zero(); dy.len()];
    let zero = T::zero();
    g.par_chunks_mut(CHUNK)
        .zip(dy.par_chunks(CHUNK).zip(y.par_chunks(CHUNK)))
        .for_each(|(g, (d, y))| {
            for ((g, d), y) in g.iter_mut().zip(d).zip(y) {
                *g = if *y > zero { *d } else { zero };
            }
        });
    g
}

impl CustomOp2 for ReluMask {
    fn name(&self) -> &'static str {
        "vssl-relu-mask"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        binary_cpu(self.name(), (s1, l1), (s2, l2), self)
    }
}
