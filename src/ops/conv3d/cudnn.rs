//! conv3d on CUDA through cuDNN's N-d convolution (the `cudnn` feature): forward,
//! input gradient (`cudnnConvolutionBackwardData`) and weight gradient
//! (`cudnnConvolutionBackwardFilter`), on the same custom ops the CPU kernels serve.
//!
//! Why it exists: without it a CUDA conv3d is the composed tensor-op form (an im2col
//! matrix built from gathers and one matmul, chunked by samples), which is correct but
//! memory-bound and several times slower than the vendor kernels PyTorch calls. cuDNN
//! also needs no im2col buffer at all.
//!
//! Precision: f32 runs with `CUDNN_FMA_MATH`, so no TF32 rounding (PyTorch allows
//! TF32 in convolutions by default; `tools/bench_torch.py --device cuda` turns it off
//! so the two sides do the same arithmetic); bf16 and f16 compute in f32 on tensor
//! cores (cuDNN's pseudo-half configurations); f64 in f64. The algorithm is cuDNN's
//! heuristic first choice (or, where its workspace cannot be allocated, the one that
//! needs none), which may be non-deterministic on the backward passes
//! (as PyTorch's default `cudnn.deterministic = False` allows): bit-exact resume is
//! a CPU guarantee.
//!
//! `VSSL_CUDNN=0` switches it off (the composed form runs instead), and a cuDNN
//! failure on a geometry falls back to the composed form with one warning
//! ([`super::conv3d`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc;
use candle_core::cuda::{CudaDevice, DeviceId};
use candle_core::cuda_backend::CudaStorageSlice;
use candle_core::{CudaStorage, DType, Layout, Tensor, WithDType};
use cudarc::cudnn::{
    sys, ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, CudnnDataType,
    FilterDescriptor, TensorDescriptor,
};
use cudarc::driver::{CudaSlice, CudaView, DeviceRepr, ValidAsZeroBits};

use super::geometry::Geom;

thread_local! {
    // cuDNN handles are neither Send nor Sync: one per thread and device, as candle
    // keeps its own.
    static HANDLES: RefCell<HashMap<DeviceId, Arc<Cudnn>>> = RefCell::new(HashMap::new());
}

/// Whether conv3d of `x` runs on cuDNN: a CUDA tensor of a float dtype cuDNN takes,
/// and not switched off with `VSSL_CUDNN=0` or by an earlier failure.
pub(super) fn applies(x: &Tensor) -> bool {
    x.device().is_cuda()
        && matches!(
            x.dtype(),
            DType::F32 | DType::BF16 | DType::F16 | DType::F64
        )
        && !switched_off()
        && FAILED.get().is_none()
}

fn switched_off() -> bool {
    static OFF: OnceLock<bool> = OnceLock::new();
    *OFF.get_or_init(|| std::env::var("VSSL_CUDNN").is_ok_and(|v| v == "0"))
}

/// Set by the first failure: later convolutions take the composed form directly.
static FAILED: OnceLock<String> = OnceLock::new();

/// Records a cuDNN failure (warned once) so that later calls skip cuDNN.
pub(super) fn failed(what: &str, e: &dyn std::fmt::Display) {
    if FAILED.set(format!("{what}: {e}")).is_ok() {
        tracing::warn!(
            "cuDNN conv3d failed ({what}: {e}); conv3d falls back to the composed tensor-op form for the rest of this run"
        );
    }
}

/// The three passes, as the CPU ops name them.
#[derive(Debug, Clone, Copy)]
pub(super) enum Pass {
    /// `(x, w) -> y`.
    Forward,
    /// `(dy, w) -> dx`.
    InputGrad,
    /// `(x, dy) -> dw`.
    WeightGrad,
}

/// Runs `pass` of `g` on the two operands (in the CPU op's order) and returns the
/// result's storage.
pub(super) fn run(
    g: &Geom,
    pass: Pass,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
) -> candle_core::Result<CudaStorage> {
    let dev = &s1.device;
    use CudaStorageSlice as S;
    match (&s1.slice, &s2.slice) {
        (S::F32(x), S::F32(y)) => launch::<f32, f32>(g, pass, view(x, l1)?, view(y, l2)?, dev),
        (S::F64(x), S::F64(y)) => launch::<f64, f64>(g, pass, view(x, l1)?, view(y, l2)?, dev),
        (S::BF16(x), S::BF16(y)) => launch::<_, f32>(g, pass, view(x, l1)?, view(y, l2)?, dev),
        (S::F16(x), S::F16(y)) => launch::<_, f32>(g, pass, view(x, l1)?, view(y, l2)?, dev),
        _ => candle_core::bail!(
            "conv3d (cuDNN): operands of dtypes {:?} and {:?}; both must be one of f32, f64, bf16, f16",
            s1.dtype(),
            s2.dtype()
        ),
    }
}

/// The contiguous elements a layout addresses, as a view.
fn view<'a, T>(s: &'a CudaSlice<T>, l: &Layout) -> candle_core::Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.slice(a..b)),
        None => candle_core::bail!("conv3d (cuDNN): operands must be contiguous"),
    }
}

fn handle(dev: &CudaDevice) -> candle_core::Result<Arc<Cudnn>> {
    HANDLES.with(|h| {
        if let Some(c) = h.borrow().get(&dev.id()) {
            return Ok(c.clone());
        }
        let c = Cudnn::new(dev.cuda_stream()).map_err(candle_core::Error::wrap)?;
        h.borrow_mut().insert(dev.id(), c.clone());
        Ok(c)
    })
}

fn i32s<const N: usize>(v: [usize; N]) -> candle_core::Result<[i32; N]> {
    let mut out = [0i32; N];
    for (o, x) in out.iter_mut().zip(v) {
        *o = i32::try_from(x).map_err(|_| {
            candle_core::Error::Msg(format!("conv3d (cuDNN): size {x} exceeds i32"))
        })?;
    }
    Ok(out)
}

/// A contiguous NCDHW tensor descriptor.
fn tensor<T: CudnnDataType>(
    h: &Arc<Cudnn>,
    dims: [usize; 5],
) -> candle_core::Result<TensorDescriptor<T>> {
    let d = i32s(dims)?;
    let mut strides = [1i32; 5];
    for i in (0..4).rev() {
        strides[i] = strides[i + 1] * d[i + 1];
    }
    h.create_nd_tensor::<T>(&d, &strides)
        .map_err(candle_core::Error::wrap)
}

/// `T` elements computed in `C` (the convolution descriptor's type).
fn launch<T, C>(
    g: &Geom,
    pass: Pass,
    a: CudaView<'_, T>,
    b: CudaView<'_, T>,
    dev: &CudaDevice,
) -> candle_core::Result<CudaStorage>
where
    T: DeviceRepr + ValidAsZeroBits + CudnnDataType + candle_core::cuda::CudaDType + WithDType,
    C: CudnnDataType,
{
    let h = handle(dev)?;
    let mut conv: ConvDescriptor<C> = h.create_convnd::<C>(
        &i32s(g.pad)?,
        &i32s(g.stride)?,
        &i32s(g.dil)?,
        sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
    )?;
    let math = if matches!(T::DTYPE, DType::F32 | DType::F64) {
        sys::cudnnMathType_t::CUDNN_FMA_MATH
    } else {
        sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH
    };
    conv.set_math_type(math)?;
    let xd = tensor::<T>(&h, g.x_dims())?;
    let yd = tensor::<T>(&h, g.y_dims())?;
    let wd: FilterDescriptor<T> = h.create_nd_filter::<T>(
        sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
        &i32s(g.w_dims())?,
    )?;
    let stream = dev.cuda_stream();
    let (one, zero) = (T::from_f64(1.0), T::from_f64(0.0));
    let out = match pass {
        Pass::Forward => {
            let op = ConvForward {
                conv: &conv,
                x: &xd,
                w: &wd,
                y: &yd,
            };
            let plain = sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
            let (algo, mut ws) = workspace(&stream, op.pick_algorithm(), plain, |a| {
                op.get_workspace_size(a)
            })?;
            let mut y = output::<T>(&stream, g.y_dims())?;
            // SAFETY: the descriptors describe exactly these contiguous buffers.
            unsafe { op.launch(algo, Some(&mut ws), (one, zero), &a, &b, &mut y) }?;
            y
        }
        Pass::InputGrad => {
            let op = ConvBackwardData {
                conv: &conv,
                dx: &xd,
                w: &wd,
                dy: &yd,
            };
            let plain = sys::cudnnConvolutionBwdDataAlgo_t::CUDNN_CONVOLUTION_BWD_DATA_ALGO_0;
            let (algo, mut ws) = workspace(&stream, op.pick_algorithm(), plain, |a| {
                op.get_workspace_size(a)
            })?;
            let mut dx = output::<T>(&stream, g.x_dims())?;
            // SAFETY: as above; `a` is dY, `b` the weight.
            unsafe { op.launch(algo, Some(&mut ws), (one, zero), &mut dx, &b, &a) }?;
            dx
        }
        Pass::WeightGrad => {
            let op = ConvBackwardFilter {
                conv: &conv,
                x: &xd,
                dw: &wd,
                dy: &yd,
            };
            let plain = sys::cudnnConvolutionBwdFilterAlgo_t::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0;
            let (algo, mut ws) = workspace(&stream, op.pick_algorithm(), plain, |a| {
                op.get_workspace_size(a)
            })?;
            let mut dw = output::<T>(&stream, g.w_dims())?;
            // SAFETY: as above; `a` is x, `b` dY.
            unsafe { op.launch(algo, Some(&mut ws), (one, zero), &a, &mut dw, &b) }?;
            dw
        }
    };
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

/// cuDNN's heuristic choice with its workspace; where the heuristics fail or that
/// workspace cannot be allocated (a large layer on a full GPU), `plain`, the
/// algorithm that needs next to none, rather than failing the layer.
fn workspace<A: Copy>(
    stream: &Arc<cudarc::driver::CudaStream>,
    best: Result<A, cudarc::cudnn::CudnnError>,
    plain: A,
    size: impl Fn(A) -> Result<usize, cudarc::cudnn::CudnnError>,
) -> candle_core::Result<(A, CudaSlice<u8>)> {
    if let Ok(a) = best {
        if let Ok(bytes) = size(a) {
            if let Ok(ws) = stream.alloc_zeros::<u8>(bytes.max(1)) {
                return Ok((a, ws));
            }
        }
    }
    let bytes = size(plain)?;
    Ok((plain, stream.alloc_zeros::<u8>(bytes.max(1))?))
}

/// The result buffer of a pass, `dims` elements.
fn output<T: DeviceRepr + ValidAsZeroBits>(
    stream: &Arc<cudarc::driver::CudaStream>,
    dims: [usize; 5],
) -> candle_core::Result<CudaSlice<T>> {
    Ok(stream.alloc_zeros::<T>(dims.iter().product())?)
}
