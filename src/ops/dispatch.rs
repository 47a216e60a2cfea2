//! The one place where custom ops look inside candle's CPU storage.
//!
//! Every CPU custom op (conv3d, batch norm, the fused residual tail, the SGD update)
//! receives `CpuStorage` enums plus layouts and must pick the dtype, check that all
//! operands share it and turn each into a dense slice. [`slices`] does that for one
//! element type, [`dispatch`] runs a kernel written once over `T` for f32 or f64, so
//! no op matches storage variants by hand.

use std::borrow::Cow;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Tensor, WithDType};

/// Whether `t` can take a CPU custom kernel: on the CPU and f32 or f64 (every other
/// device or dtype runs the op's candle-tensor-op path).
pub(crate) fn cpu_float(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// An element type a CPU kernel can run on: f32 or f64.
pub(crate) trait Float: WithDType {
    /// The storage's elements when they are of this type.
    fn elems(s: &CpuStorage) -> Option<&[Self]>;
    /// A kernel's output as storage.
    fn storage(v: Vec<Self>) -> CpuStorage;
}

impl Float for f32 {
    fn elems(s: &CpuStorage) -> Option<&[f32]> {
        match s {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
    fn storage(v: Vec<f32>) -> CpuStorage {
        CpuStorage::F32(v)
    }
}

impl Float for f64 {
    fn elems(s: &CpuStorage) -> Option<&[f64]> {
        match s {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
    fn storage(v: Vec<f64>) -> CpuStorage {
        CpuStorage::F64(v)
    }
}

/// A CPU kernel over `N` operands of one float type, written once for f32 and f64.
pub(crate) trait FloatKernel<const N: usize> {
    fn run<T: WithDType>(&self, args: [&[T]; N]) -> Vec<T>;
}

/// The operands as dense row-major slices of `T` (borrowed when contiguous, copied
/// when strided), or an error naming `op` when any operand has another dtype.
pub(crate) fn slices<'a, T: Float, const N: usize>(
    op: &str,
    args: [(&'a CpuStorage, &'a Layout); N],
) -> candle_core::Result<[Cow<'a, [T]>; N]> {
    let mut out = Vec::with_capacity(N);
    for (s, l) in args {
        match T::elems(s) {
            Some(data) => out.push(dense(data, l)),
            None => {
                return Err(candle_core::Error::Msg(format!(
                    "{op}: operand of dtype {:?} where {:?} was expected (all operands share one dtype)",
                    s.dtype(),
                    T::DTYPE
                )))
            }
        }
    }
    out.try_into()
        .map_err(|_| candle_core::Error::Msg(format!("{op}: operand count")))
}

/// Runs `kernel` on the operands as f32 or f64 (the first operand's dtype; all must
/// share it) and wraps its output as storage.
pub(crate) fn dispatch<const N: usize>(
    op: &str,
    args: [(&CpuStorage, &Layout); N],
    kernel: &impl FloatKernel<N>,
) -> candle_core::Result<CpuStorage> {
    fn run<T: Float, const N: usize>(
        op: &str,
        args: [(&CpuStorage, &Layout); N],
        kernel: &impl FloatKernel<N>,
    ) -> candle_core::Result<CpuStorage> {
        let owned = slices::<T, N>(op, args)?;
        Ok(T::storage(kernel.run(std::array::from_fn(|i| &*owned[i]))))
    }
    match args.first().map(|(s, _)| s.dtype()) {
        Some(DType::F32) => run::<f32, N>(op, args, kernel),
        Some(DType::F64) => run::<f64, N>(op, args, kernel),
        other => Err(candle_core::Error::Msg(format!(
            "{op}: unsupported dtype {other:?} (f32/f64 only)"
        ))),
    }
}

/// The storage of a layout as a dense row-major slice (copied only if strided).
fn dense<'a, T: Copy>(data: &'a [T], l: &Layout) -> Cow<'a, [T]> {
    if let Some((a, b)) = l.contiguous_offsets() {
        return Cow::Borrowed(&data[a..b]);
    }
    let dims = l.dims();
    let strides = l.stride();
    let count = l.shape().elem_count();
    let mut out = Vec::with_capacity(count);
    let mut idx = vec![0usize; dims.len()];
    let mut off = l.start_offset();
    for _ in 0..count {
        out.push(data[off]);
        for d in (0..dims.len()).rev() {
            idx[d] += 1;
            off += strides[d];
            if idx[d] < dims[d] {
                break;
            }
            off -= strides[d] * dims[d];
            idx[d] = 0;
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sum;
    impl FloatKernel<2> for Sum {
        fn run<T: WithDType>(&self, [a, b]: [&[T]; 2]) -> Vec<T> {
            a.iter().zip(b).map(|(x, y)| *x + *y).collect()
        }
    }

    #[test]
    fn dispatch_runs_f32_and_f64_reads_strided_operands_and_rejects_mixed_dtypes() {
        let l = Layout::contiguous((2, 2));
        // The transpose of [[0, 1], [2, 3]]: reads 0, 2, 1, 3.
        let t = l.transpose(0, 1).unwrap();
        let a = CpuStorage::F32(vec![0.0, 1.0, 2.0, 3.0]);
        let b = CpuStorage::F32(vec![10.0; 4]);
        match dispatch("sum", [(&a, &t), (&b, &l)], &Sum).unwrap() {
            CpuStorage::F32(v) => assert_eq!(v, [10.0, 12.0, 11.0, 13.0]),
            other => panic!("{:?}", other.dtype()),
        }
        let c = CpuStorage::F64(vec![1.0; 4]);
        match dispatch("sum", [(&c, &l), (&c, &l)], &Sum).unwrap() {
            CpuStorage::F64(v) => assert_eq!(v, [2.0; 4]),
            other => panic!("{:?}", other.dtype()),
        }
        let e = dispatch("sum", [(&a, &l), (&c, &l)], &Sum).unwrap_err();
        assert!(e.to_string().contains("sum: operand of dtype F64"), "{e}");
        let u = CpuStorage::U8(vec![0; 4]);
        let e = dispatch("sum", [(&u, &l), (&u, &l)], &Sum).unwrap_err();
        assert!(e.to_string().contains("f32/f64 only"), "{e}");
    }
}
