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
    let zero = T::zero();
    zip_map(a, b, |a, b| {
        let v = a + b;
        if v > zero {
            v
        } else {
            zero
        }
    })
}

/// `f(a[i], b[i])` for equal-length slices, in parallel chunks, written through the
/// output's spare capacity (no zeroing pass: these kernels are memory-bound).
fn zip_map<T: WithDType>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    let n = a.len().min(b.len());
    let mut y = Vec::with_capacity(n);
    y.spare_capacity_mut()
        .par_chunks_mut(CHUNK)
        .zip(a[..n].par_chunks(CHUNK).zip(b[..n].par_chunks(CHUNK)))
        .for_each(|(y, (a, b))| {
            for ((y, a), b) in y.iter_mut().zip(a).zip(b) {
                y.write(f(*a, *b));
            }
        });
    // SAFETY: the chunks cover all `n` elements and each was written.
    unsafe { y.set_len(n) };
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
    let zero = T::zero();
    zip_map(dy, y, |d, y| if y > zero { d } else { zero })
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
