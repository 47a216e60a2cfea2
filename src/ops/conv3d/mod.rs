//! 3D convolution over NCTHW video tensors.
//!
//! candle 0.11 has conv1d/conv2d but no conv3d, and every video backbone needs one.
//! On CPU the convolution is a candle [`CustomOp2`]: vol2col (im2col over T, H, W)
//! into a scratch buffer, then one `gemm` per sample, parallel over the batch. Its
//! backward pass is two more custom ops: the input gradient is `Wᵀ·dY` scattered back
//! with col2vol, the weight gradient is `Σₙ dYₙ·colsₙᵀ`. On CUDA with the `cudnn`
//! feature the same three custom ops run cuDNN's N-d convolution (`cudnn.rs`). On
//! every other device (and where cuDNN is off or fails) [`conv3d_generic`] builds
//! the same im2col from candle tensor ops (pad, index_select, permute, matmul), so
//! any device works and autograd is free.
//!
//! The CPU kernels are deterministic: every output element is produced by exactly one
//! task with a fixed summation order (no racing accumulations), so training resumes
//! bit for bit.
//!
//! Files: this one holds the public API, the layer, the tensor-op path and the custom
//! ops; `geometry.rs` the validated output sizes; `cpu.rs` the blocked vol2col+gemm
//! kernels; `pointwise.rs` the 1x1x1 layers as plain gemms (all CPUs); `direct.rs`
//! the AVX-512 direct kernels; `winograd.rs` the AVX-512 Winograd F(2x2x2, 3x3x3) and
//! F(2x2, 3x3) kernels for 3x3x3 and 1x3x3 stride-1 layers; `trim.rs` the gradients
//! of kernels with taps that only read padding, on the live taps; `cudnn.rs` the CUDA
//! passes on cuDNN; `algo.rs` which of
//! them runs (by geometry, or forced with `VSSL_CONV_ALGO=direct|winograd|blocked`;
//! `VSSL_CPU_NO_AVX512=1` makes this CPU behave like one without AVX-512).

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor, WithDType};

mod algo;
mod cpu;
#[cfg(feature = "cudnn")]
mod cudnn;
mod direct;
mod geometry;
mod pointwise;
mod trim;
mod winograd;

use geometry::Geom;

use super::dispatch::{cpu_float, dispatch, FloatKernel};
use super::{op_error, profile};
use crate::nn::{Init, VarStore};
use crate::Result;

/// Stride, zero padding and dilation per axis (T, H, W), as PyTorch's `nn.Conv3d`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conv3dConfig {
    pub stride: [usize; 3],
    pub padding: [usize; 3],
    pub dilation: [usize; 3],
}

impl Default for Conv3dConfig {
    fn default() -> Self {
        Self {
            stride: [1; 3],
            padding: [0; 3],
            dilation: [1; 3],
        }
    }
}

/// 3D convolution. `x`: `[N, C, T, H, W]`, `w`: `[O, C, kt, kh, kw]` (PyTorch layout),
/// `bias`: `[O]`. Returns `[N, O, T', H', W']` with PyTorch's output-size formula
/// `(L + 2p - d(k-1) - 1) / s + 1`. On CPU (f32/f64) this runs the custom op, on
/// any other device (or dtype) [`conv3d_generic`].
pub fn conv3d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, cfg: &Conv3dConfig) -> Result<Tensor> {
    let g = Geom::new(x, w, cfg)?;
    let y = if cpu_float(x) {
        x.contiguous()?.apply_op2(&w.contiguous()?, Conv3dFwd(g))?
    } else if on_cudnn(x) {
        match x.contiguous()?.apply_op2(&w.contiguous()?, Conv3dFwd(g)) {
            Ok(y) => y,
            Err(e) => {
                cudnn_failed("forward", &e);
                generic_no_bias(x, w, &g, GENERIC_COLS_LIMIT)?
            }
        }
    } else {
        generic_no_bias(x, w, &g, GENERIC_COLS_LIMIT)?
    };
    add_bias(y, bias, g.o)
}

/// Whether `x`'s convolution runs on cuDNN (`cudnn` feature, CUDA, not switched off).
fn on_cudnn(x: &Tensor) -> bool {
    #[cfg(feature = "cudnn")]
    return cudnn::applies(x);
    #[cfg(not(feature = "cudnn"))]
    {
        let _ = x;
        false
    }
}

/// Reports a cuDNN failure once; later convolutions take the composed form.
fn cudnn_failed(what: &str, e: &dyn std::fmt::Display) {
    #[cfg(feature = "cudnn")]
    cudnn::failed(what, e);
    #[cfg(not(feature = "cudnn"))]
    let _ = (what, e);
}

/// The input and weight gradients of the composed form, by candle's autograd on a
/// detached copy: where a device kernel failed inside the backward pass.
fn composed_grads(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    g: &Geom,
) -> candle_core::Result<(Tensor, Tensor)> {
    let xv = candle_core::Var::from_tensor(&x.detach())?;
    let wv = candle_core::Var::from_tensor(&w.detach())?;
    let y = generic_no_bias(xv.as_tensor(), wv.as_tensor(), g, GENERIC_COLS_LIMIT)
        .map_err(candle_core::Error::wrap)?;
    let grads = (y * dy.detach())?.sum_all()?.backward()?;
    let get = |v: &candle_core::Var| {
        grads
            .get(v.as_tensor())
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg("conv3d: composed form has no gradient".into()))
    };
    Ok((get(&xv)?, get(&wv)?))
}

/// 3D convolution built only from candle tensor ops (pad, index_select, permute,
/// matmul): works on every device and gets autograd from candle. Same contract as
/// [`conv3d`]; on CPU it is slower and needs the whole batch's im2col matrix in memory.
pub fn conv3d_generic(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    cfg: &Conv3dConfig,
) -> Result<Tensor> {
    conv3d_generic_chunked(x, w, bias, cfg, GENERIC_COLS_LIMIT)
}

/// [`conv3d_generic`] building at most `max_cols` elements of im2col matrix at once
/// (whole samples at a time, at least one).
pub fn conv3d_generic_chunked(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    cfg: &Conv3dConfig,
    max_cols: usize,
) -> Result<Tensor> {
    let g = Geom::new(x, w, cfg)?;
    let y = generic_no_bias(x, w, &g, max_cols)?;
    add_bias(y, bias, g.o)
}

/// A 3D convolution layer holding its parameters.
pub struct Conv3d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub cfg: Conv3dConfig,
}

impl Conv3d {
    /// Creates (or fetches) `weight` `[out_c, in_c, kt, kh, kw]` (Kaiming-normal,
    /// fan-out) and, if `bias`, `bias` `[out_c]` (zeros) in `vs`.
    pub fn new(
        vs: &VarStore,
        in_c: usize,
        out_c: usize,
        kernel: [usize; 3],
        cfg: Conv3dConfig,
        bias: bool,
    ) -> Result<Self> {
        let [kt, kh, kw] = kernel;
        if in_c == 0 || out_c == 0 || kernel.contains(&0) {
            return Err(op_error(
                "Conv3d",
                format!("channels and kernel sizes must be positive, got in {in_c}, out {out_c}, kernel {kernel:?}"),
            ));
        }
        let weight = vs.var(
            "weight",
            (out_c, in_c, kt, kh, kw),
            Init::KaimingNormalFanOut,
        )?;
        let bias = if bias {
            Some(vs.var("bias", out_c, Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self { weight, bias, cfg })
    }

    /// Weights in `x`'s dtype: f32 master weights run a bf16 input in bf16 (their
    /// gradient comes back in f32 through the cast).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.weight.to_dtype(x.dtype())?;
        conv3d(x, &w, self.bias.as_ref(), &self.cfg)
    }
}

fn add_bias(y: Tensor, bias: Option<&Tensor>, o: usize) -> Result<Tensor> {
    let Some(b) = bias else { return Ok(y) };
    if b.dims() != [o] {
        return Err(op_error(
            "conv3d",
            format!(
                "bias must have shape [{o}] (output channels), got {:?}",
                b.dims()
            ),
        ));
    }
    Ok(y.broadcast_add(&b.to_dtype(y.dtype())?.reshape((1, o, 1, 1, 1))?)?)
}

/// The tensor-op convolution: pad, gather every kernel tap along each axis with one
/// index_select per axis, rearrange into `[N, C·K, L]` and multiply by `W` as `[O, C·K]`.
///
/// The im2col matrix is `C·K` times larger than the output: batches whose matrix
/// would exceed `max_cols` elements run in chunks of samples, so memory stays
/// bounded on the GPU.
fn generic_no_bias(x: &Tensor, w: &Tensor, g: &Geom, max_cols: usize) -> Result<Tensor> {
    let per_sample = g.ck() * g.l();
    let chunk = (max_cols / per_sample.max(1)).max(1);
    if g.n > chunk {
        let mut parts = Vec::new();
        let mut start = 0;
        while start < g.n {
            let len = chunk.min(g.n - start);
            let sub = Geom { n: len, ..*g };
            parts.push(generic_chunk(&x.narrow(0, start, len)?, w, &sub)?);
            start += len;
        }
        return Ok(Tensor::cat(&parts, 0)?);
    }
    generic_chunk(x, w, g)
}

/// Default im2col elements the generic path builds at once (1 GiB of f32).
const GENERIC_COLS_LIMIT: usize = 1 << 28;

fn generic_chunk(x: &Tensor, w: &Tensor, g: &Geom) -> Result<Tensor> {
    // index_select needs contiguous storage.
    let mut cols = x.contiguous()?;
    for ax in 0..3 {
        let dim = 2 + ax;
        cols = cols.pad_with_zeros(dim, g.pad[ax], g.pad[ax])?;
        // Tap `a`, output `o` reads padded index a·d + o·s; skip the identity gather.
        if g.k[ax] == 1 && g.stride[ax] == 1 && g.out[ax] == cols.dim(dim)? {
            continue;
        }
        let idx: Vec<u32> = (0..g.k[ax])
            .flat_map(|a| (0..g.out[ax]).map(move |o| (a * g.dil[ax] + o * g.stride[ax]) as u32))
            .collect();
        let idx = Tensor::from_vec(idx, g.k[ax] * g.out[ax], x.device())?;
        cols = cols.index_select(&idx, dim)?;
    }
    // [N, C, kt·T', kh·H', kw·W'] -> [N, C, kt, T', kh, H', kw, W'] -> [N, C, kt, kh, kw, T', H', W']
    let [kt, kh, kw] = g.k;
    let [ot, oh, ow] = g.out;
    let cols = cols
        .reshape(vec![g.n, g.c, kt, ot, kh, oh, kw, ow])?
        .permute(vec![0, 1, 2, 4, 6, 3, 5, 7])?
        .contiguous()?
        .reshape((g.n, g.ck(), g.l()))?;
    let y = w.reshape((g.o, g.ck()))?.broadcast_matmul(&cols)?;
    Ok(y.reshape(g.y_dims().to_vec())?)
}

/// One convolution's CPU kernels on f32 slices, each pass timed under the same
/// profile row as the custom ops: the pieces fused CPU ops are built from (the
/// residual block of [`crate::ops::block`]).
pub(in crate::ops) struct CpuConv(Geom);

impl CpuConv {
    /// The geometry of `conv3d(x, w, cfg)` (checked as [`conv3d`] checks it).
    pub(in crate::ops) fn new(x: &Tensor, w: &Tensor, cfg: &Conv3dConfig) -> Result<Self> {
        Ok(Self(Geom::new(x, w, cfg)?))
    }

    /// The output's shape `[N, O, T', H', W']`.
    pub(in crate::ops) fn y_dims(&self) -> [usize; 5] {
        self.0.y_dims()
    }

    fn timed(&self, op: &'static str, pass: cpu::Pass, f: impl FnOnce() -> Vec<f32>) -> Vec<f32> {
        let g = &self.0;
        profile::timed(
            op,
            || format!("{} {}", g.describe(), cpu::path(g, pass, true)),
            g.flops(),
            f,
        )
    }

    /// `y = conv(x, w)`.
    pub(in crate::ops) fn fwd(&self, x: &[f32], w: &[f32]) -> Vec<f32> {
        self.timed("conv3d.fwd", cpu::Pass::Forward, || cpu::fwd(&self.0, x, w))
    }

    /// `dx` from `dy`.
    pub(in crate::ops) fn dx(&self, dy: &[f32], w: &[f32]) -> Vec<f32> {
        self.timed("conv3d.dx", cpu::Pass::InputGrad, || {
            cpu::bwd_input(&self.0, dy, w)
        })
    }

    /// `dw` from `x` and `dy`.
    pub(in crate::ops) fn dw(&self, x: &[f32], dy: &[f32]) -> Vec<f32> {
        self.timed("conv3d.dw", cpu::Pass::WeightGrad, || {
            cpu::bwd_weight(&self.0, x, dy)
        })
    }
}

/// The profile row's shape column: geometry and the kernel that ran.
fn label(g: &Geom, pass: cpu::Pass, s: &CpuStorage) -> String {
    let f32 = matches!(s, CpuStorage::F32(_));
    format!("{} {}", g.describe(), cpu::path(g, pass, f32))
}

/// The CPU kernels [`conv3d`] runs for the forward pass, the input gradient and the
/// weight gradient of `x` (`[N, C, T, H, W]`) and `w` on this machine: `"winograd"`,
/// `"direct"` or `"blocked"` each (f64 always takes `"blocked"`). It follows the
/// geometry and the `VSSL_CONV_ALGO` / `VSSL_CPU_NO_AVX512` switches, so benchmarks
/// and tests can say which path they measured.
pub fn conv3d_cpu_kernels(x: &Tensor, w: &Tensor, cfg: &Conv3dConfig) -> Result<[&'static str; 3]> {
    let g = Geom::new(x, w, cfg)?;
    let f32 = x.dtype() == candle_core::DType::F32;
    Ok([
        cpu::Pass::Forward,
        cpu::Pass::InputGrad,
        cpu::Pass::WeightGrad,
    ]
    .map(|p| cpu::path(&g, p, f32)))
}

fn check_layout(op: &str, l: &Layout, want: [usize; 5]) -> candle_core::Result<()> {
    if l.dims() != want {
        return Err(candle_core::Error::Msg(format!(
            "{op}: argument has shape {:?}, expected {want:?}",
            l.dims()
        )));
    }
    Ok(())
}

/// The first `len` elements of the reused scratch buffer `v`, grown if needed. It
/// never shrinks, so layers of different sizes do not re-zero it in turn; callers
/// overwrite every element they read.
fn scratch(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// A raw pointer tasks share to write disjoint parts of one output (the blocked and
/// the direct kernels both hand one to their parallel tasks).
#[derive(Clone, Copy)]
struct SyncPtr<T>(*mut T);
// SAFETY: only used for writes to element sets that are disjoint between tasks (see
// each use).
unsafe impl<T> Send for SyncPtr<T> {}
unsafe impl<T> Sync for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    fn get(self) -> *mut T {
        self.0
    }
}

/// The three CPU kernels as [`FloatKernel`]s over their two operands.
#[derive(Clone, Copy)]
enum Kernel<'a> {
    /// `(x, w) -> y`.
    Fwd(&'a Geom),
    /// `(dy, w) -> dx`.
    BwdInput(&'a Geom),
    /// `(x, dy) -> dw`.
    BwdWeight(&'a Geom),
}

impl FloatKernel<2> for Kernel<'_> {
    fn run<T: WithDType>(&self, [a, b]: [&[T]; 2]) -> Vec<T> {
        match *self {
            Kernel::Fwd(g) => cpu::fwd(g, a, b),
            Kernel::BwdInput(g) => cpu::bwd_input(g, a, b),
            Kernel::BwdWeight(g) => cpu::bwd_weight(g, a, b),
        }
    }
}

/// The CUDA side of a conv3d custom op: `$pass` on cuDNN, a result of `$dims`.
macro_rules! cudnn_pass {
    ($pass:ident, $dims:ident) => {
        #[cfg(feature = "cudnn")]
        fn cuda_fwd(
            &self,
            s1: &candle_core::CudaStorage,
            l1: &Layout,
            s2: &candle_core::CudaStorage,
            l2: &Layout,
        ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
            let out = cudnn::run(&self.0, cudnn::Pass::$pass, s1, l1, s2, l2)?;
            Ok((out, Shape::from(self.0.$dims().to_vec())))
        }
    };
}

/// Forward op: (x, w) -> y.
struct Conv3dFwd(Geom);

impl CustomOp2 for Conv3dFwd {
    fn name(&self) -> &'static str {
        "vssl-conv3d"
    }

    cudnn_pass!(Forward, y_dims);

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = &self.0;
        check_layout(self.name(), l1, g.x_dims())?;
        check_layout(self.name(), l2, g.w_dims())?;
        let y = profile::timed(
            "conv3d.fwd",
            || label(g, cpu::Pass::Forward, s1),
            g.flops(),
            || dispatch(self.name(), [(s1, l1), (s2, l2)], &Kernel::Fwd(g)),
        )?;
        Ok((y, Shape::from(g.y_dims().to_vec())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        // Skip gradients nobody asked for (e.g. the network's input clip).
        let run = || -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
            let dx = if x.track_op() {
                Some(dy.apply_op2_no_bwd(w, &Conv3dBwdInput(self.0))?)
            } else {
                None
            };
            let dw = if w.track_op() {
                Some(x.apply_op2_no_bwd(&dy, &Conv3dBwdWeight(self.0))?)
            } else {
                None
            };
            Ok((dx, dw))
        };
        let (dx, dw) = match run() {
            Ok(r) => r,
            // Only cuDNN can fail here on a geometry the forward took.
            Err(e) if !x.device().is_cpu() => {
                cudnn_failed("backward", &e);
                let (dx, dw) = composed_grads(x, w, &dy, &self.0)?;
                (x.track_op().then_some(dx), w.track_op().then_some(dw))
            }
            Err(e) => return Err(e),
        };
        // In a training step, a variable's gradient skips candle's zero-fill + add.
        let dw = match dw {
            Some(g) if super::grad_sink::takes(w) => {
                super::grad_sink::sink(w, g);
                None
            }
            dw => dw,
        };
        Ok((dx, dw))
    }
}

/// Input-gradient op: (dy, w) -> dx.
struct Conv3dBwdInput(Geom);

impl CustomOp2 for Conv3dBwdInput {
    fn name(&self) -> &'static str {
        "vssl-conv3d-bwd-input"
    }

    cudnn_pass!(InputGrad, x_dims);

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = &self.0;
        check_layout(self.name(), l1, g.y_dims())?;
        check_layout(self.name(), l2, g.w_dims())?;
        let dx = profile::timed(
            "conv3d.dx",
            || label(g, cpu::Pass::InputGrad, s1),
            g.flops(),
            || dispatch(self.name(), [(s1, l1), (s2, l2)], &Kernel::BwdInput(g)),
        )?;
        Ok((dx, Shape::from(g.x_dims().to_vec())))
    }
}

/// Weight-gradient op: (x, dy) -> dw.
struct Conv3dBwdWeight(Geom);

impl CustomOp2 for Conv3dBwdWeight {
    fn name(&self) -> &'static str {
        "vssl-conv3d-bwd-weight"
    }

    cudnn_pass!(WeightGrad, w_dims);

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = &self.0;
        check_layout(self.name(), l1, g.x_dims())?;
        check_layout(self.name(), l2, g.y_dims())?;
        let dw = profile::timed(
            "conv3d.dw",
            || label(g, cpu::Pass::WeightGrad, s1),
            g.flops(),
            || dispatch(self.name(), [(s1, l1), (s2, l2)], &Kernel::BwdWeight(g)),
        )?;
        Ok((dw, Shape::from(g.w_dims().to_vec())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The fallback a device takes when its kernel fails inside the backward pass
    /// gives the gradients of the CPU kernels.
    #[test]
    fn composed_gradients_equal_the_kernels() {
        let dev = Device::Cpu;
        let cfg = Conv3dConfig {
            stride: [1, 2, 2],
            padding: [1, 1, 1],
            dilation: [1, 1, 1],
        };
        let x =
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 4, 7, 6), &dev).unwrap()).unwrap();
        let w =
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 3, 3, 3, 3), &dev).unwrap()).unwrap();
        let y = conv3d(x.as_tensor(), w.as_tensor(), None, &cfg).unwrap();
        let dy = Tensor::randn(0f32, 1.0, y.dims(), &dev).unwrap();
        let grads = (y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        let g = Geom::new(x.as_tensor(), w.as_tensor(), &cfg).unwrap();
        let (dx, dw) = composed_grads(x.as_tensor(), w.as_tensor(), &dy, &g).unwrap();
        for (got, want) in [
            (dx, grads.get(x.as_tensor())),
            (dw, grads.get(w.as_tensor())),
        ] {
            let want = want.unwrap();
            assert_eq!(got.dims(), want.dims());
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
            let scale = want.abs().unwrap().max_all().unwrap();
            let rel = diff.to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap();
            assert!(rel < 1e-5, "relative difference {rel}");
        }
    }
}
