//! 3D convolution over NCTHW video tensors.
//!
//! candle 0.11 has conv1d/conv2d but no conv3d, and every video backbone needs one.
//! On CPU the convolution is a candle [`CustomOp2`]: vol2col (im2col over T, H, W)
//! into a scratch buffer, then one `gemm` per sample, parallel over the batch. Its
//! backward pass is two more custom ops: the input gradient is `Wᵀ·dY` scattered back
//! with col2vol, the weight gradient is `Σₙ dYₙ·colsₙᵀ`. On every other device
//! [`conv3d_generic`] builds the same im2col from candle tensor ops (pad,
//! index_select, permute, matmul), so CUDA works unchanged and autograd is free.
//!
//! The CPU kernels are deterministic: every output element is produced by exactly one
//! task with a fixed summation order (no racing accumulations), so training resumes
//! bit for bit.

use std::borrow::Cow;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor, WithDType};
use gemm::Parallelism;
use rayon::prelude::*;

use super::{dims5, op_error};
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
    let y = if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        x.contiguous()?.apply_op2(&w.contiguous()?, Conv3dFwd(g))?
    } else {
        generic_no_bias(x, w, &g)?
    };
    add_bias(y, bias, g.o)
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
    let g = Geom::new(x, w, cfg)?;
    let y = generic_no_bias(x, w, &g)?;
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

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        conv3d(x, &self.weight, self.bias.as_ref(), &self.cfg)
    }
}

/// Fully resolved geometry of one convolution (validated once, shared by all kernels).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Geom {
    n: usize,
    c: usize,
    o: usize,
    inp: [usize; 3],
    k: [usize; 3],
    out: [usize; 3],
    stride: [usize; 3],
    pad: [usize; 3],
    dil: [usize; 3],
}

impl Geom {
    fn new(x: &Tensor, w: &Tensor, cfg: &Conv3dConfig) -> Result<Self> {
        const OP: &str = "conv3d";
        let [n, c, t, h, wd] = dims5(OP, "input", x)?;
        let [o, wc, kt, kh, kw] = match *w.dims() {
            [a, b, c, d, e] => [a, b, c, d, e],
            _ => {
                return Err(op_error(
                    OP,
                    format!(
                        "weight must be [O, C, kt, kh, kw], got shape {:?}",
                        w.dims()
                    ),
                ))
            }
        };
        if c != wc {
            return Err(op_error(
                OP,
                format!(
                    "channel mismatch: input {:?} has {c} channels, weight {:?} expects {wc}",
                    x.dims(),
                    w.dims()
                ),
            ));
        }
        if x.dtype() != w.dtype() {
            return Err(op_error(
                OP,
                format!(
                    "dtype mismatch: input {:?}, weight {:?}",
                    x.dtype(),
                    w.dtype()
                ),
            ));
        }
        if !x.device().same_device(w.device()) {
            return Err(op_error(OP, "input and weight are on different devices"));
        }
        if o == 0 || c == 0 || [kt, kh, kw].contains(&0) {
            return Err(op_error(
                OP,
                format!("weight {:?} has a zero-sized dimension", w.dims()),
            ));
        }
        if cfg.stride.contains(&0) || cfg.dilation.contains(&0) {
            return Err(op_error(
                OP,
                format!(
                    "stride {:?} and dilation {:?} must be positive",
                    cfg.stride, cfg.dilation
                ),
            ));
        }
        let inp = [t, h, wd];
        let k = [kt, kh, kw];
        let mut out = [0; 3];
        for ax in 0..3 {
            let padded = inp[ax] + 2 * cfg.padding[ax];
            let span = cfg.dilation[ax] * (k[ax] - 1) + 1;
            if padded < span {
                return Err(op_error(
                    OP,
                    format!(
                        "input {:?}: axis {} has size {} ({} padded), smaller than the dilated kernel extent {}",
                        x.dims(),
                        ["T", "H", "W"][ax],
                        inp[ax],
                        padded,
                        span
                    ),
                ));
            }
            out[ax] = (padded - span) / cfg.stride[ax] + 1;
        }
        Ok(Self {
            n,
            c,
            o,
            inp,
            k,
            out,
            stride: cfg.stride,
            pad: cfg.padding,
            dil: cfg.dilation,
        })
    }

    fn kvol(&self) -> usize {
        self.k.iter().product()
    }
    /// Rows of the im2col matrix: C·kt·kh·kw.
    fn ck(&self) -> usize {
        self.c * self.kvol()
    }
    /// Output positions per sample (columns of the im2col matrix).
    fn l(&self) -> usize {
        self.out.iter().product()
    }
    /// Input positions per channel.
    fn lin(&self) -> usize {
        self.inp.iter().product()
    }
    fn x_dims(&self) -> [usize; 5] {
        [self.n, self.c, self.inp[0], self.inp[1], self.inp[2]]
    }
    fn w_dims(&self) -> [usize; 5] {
        [self.o, self.c, self.k[0], self.k[1], self.k[2]]
    }
    fn y_dims(&self) -> [usize; 5] {
        [self.n, self.o, self.out[0], self.out[1], self.out[2]]
    }
    /// 1×1×1 kernel, stride 1, no padding: the im2col matrix is the input itself.
    fn pointwise(&self) -> bool {
        self.kvol() == 1 && self.stride == [1; 3] && self.pad == [0; 3]
    }

    /// The `[C·K, L]` im2col matrix of one sample `xn` (`[C, T, H, W]`), built in
    /// `scratch` unless it is `xn` itself.
    fn cols<'a, T: WithDType>(
        &self,
        xn: &'a [T],
        scratch: &'a mut Vec<T>,
        parallel: bool,
    ) -> &'a [T] {
        if self.pointwise() {
            return xn;
        }
        scratch.resize(self.ck() * self.l(), T::from_f64(0.0));
        let rows = self.kvol() * self.l();
        if parallel {
            scratch
                .par_chunks_mut(rows)
                .zip(xn.par_chunks(self.lin()))
                .for_each(|(c, x)| vol2col_channel(self, x, c));
        } else {
            scratch
                .chunks_mut(rows)
                .zip(xn.chunks(self.lin()))
                .for_each(|(c, x)| vol2col_channel(self, x, c));
        }
        scratch
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
fn generic_no_bias(x: &Tensor, w: &Tensor, g: &Geom) -> Result<Tensor> {
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

// ---------------------------------------------------------------------------------
// CPU kernels
// ---------------------------------------------------------------------------------

/// Output positions `o` in `0..out` whose input index `o·s + off - p` lies in `0..len`,
/// as a half-open range (empty ranges come back as `(lo, lo)`).
fn valid_range(out: usize, s: usize, off: usize, p: usize, len: usize) -> (usize, usize) {
    let lo = if p > off { (p - off).div_ceil(s) } else { 0 }.min(out);
    let hi = if len + p > off {
        ((len + p - off - 1) / s + 1).min(out)
    } else {
        0
    };
    (lo, hi.max(lo))
}

/// Visits every (row, T'-slab, H'-row) of one channel's im2col block: calls `f` with
/// the destination row segment (length W'), the input row index (`t·H + h`) or `None`
/// when that segment lies entirely in padding, the valid W' range and the input W
/// offset of its first element. Shared by vol2col and col2vol so both walk the same
/// geometry.
#[inline(always)]
fn for_each_segment(g: &Geom, mut f: impl FnMut(usize, Option<usize>, (usize, usize), usize)) {
    let [it, ih, iw] = g.inp;
    let [ot, oh, ow] = g.out;
    let [s0, s1, s2] = g.stride;
    let [p0, p1, p2] = g.pad;
    let [d0, d1, d2] = g.dil;
    let [k0, k1, k2] = g.k;
    let l = ot * oh * ow;
    for a in 0..k0 {
        let (t_lo, t_hi) = valid_range(ot, s0, a * d0, p0, it);
        for b in 0..k1 {
            let (h_lo, h_hi) = valid_range(oh, s1, b * d1, p1, ih);
            for e in 0..k2 {
                let (w_lo, w_hi) = valid_range(ow, s2, e * d2, p2, iw);
                let row = ((a * k1 + b) * k2 + e) * l;
                // First input W index of the valid range (only meaningful if non-empty).
                let w_start = if w_lo < w_hi {
                    w_lo * s2 + e * d2 - p2
                } else {
                    0
                };
                for t in 0..ot {
                    let t_ok = t >= t_lo && t < t_hi;
                    for h in 0..oh {
                        let seg = row + (t * oh + h) * ow;
                        let src = if t_ok && h >= h_lo && h < h_hi {
                            let ti = t * s0 + a * d0 - p0;
                            let hi = h * s1 + b * d1 - p1;
                            Some(ti * ih + hi)
                        } else {
                            None
                        };
                        f(seg, src, (w_lo, w_hi), w_start);
                    }
                }
            }
        }
    }
}

/// im2col for one channel: `cols` is `[K, L]` (rows kt, kh, kw), `xc` is `[T, H, W]`.
fn vol2col_channel<T: WithDType>(g: &Geom, xc: &[T], cols: &mut [T]) {
    let zero = T::from_f64(0.0);
    let (ow, iw, s) = (g.out[2], g.inp[2], g.stride[2]);
    for_each_segment(g, |seg, src, (lo, hi), start| {
        let dst = &mut cols[seg..seg + ow];
        let Some(r) = src else {
            dst.fill(zero);
            return;
        };
        let src = &xc[r * iw..(r + 1) * iw];
        dst[..lo].fill(zero);
        dst[hi..].fill(zero);
        if s == 1 {
            dst[lo..hi].copy_from_slice(&src[start..start + hi - lo]);
        } else {
            for (d, v) in dst[lo..hi].iter_mut().zip(src[start..].iter().step_by(s)) {
                *d = *v;
            }
        }
    });
}

/// col2im for one channel: accumulates `cols` (`[K, L]`) into `dxc` (`[T, H, W]`,
/// zeroed by the caller) in a fixed order.
fn col2vol_channel<T: WithDType>(g: &Geom, cols: &[T], dxc: &mut [T]) {
    let (iw, s) = (g.inp[2], g.stride[2]);
    for_each_segment(g, |seg, src, (lo, hi), start| {
        let Some(r) = src else { return };
        let col = &cols[seg + lo..seg + hi];
        let dst = &mut dxc[r * iw..(r + 1) * iw];
        if s == 1 {
            for (d, v) in dst[start..start + hi - lo].iter_mut().zip(col) {
                *d += *v;
            }
        } else {
            for (d, v) in dst[start..].iter_mut().step_by(s).zip(col) {
                *d += *v;
            }
        }
    });
}

/// `dst[m×n] = (accumulate ? dst : 0) + lhs[m×k] · rhs[k×n]` with `dst` row-major and
/// contiguous; `lhs`/`rhs` are given as (row stride, column stride).
#[allow(clippy::too_many_arguments)]
fn gemm_into<T: WithDType>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    lhs: &[T],
    (lrs, lcs): (usize, usize),
    rhs: &[T],
    (rrs, rcs): (usize, usize),
    accumulate: bool,
    par: Parallelism,
) {
    // gemm reads raw pointers: make sure the furthest elements are inside the slices.
    assert!(m > 0 && n > 0 && k > 0 && dst.len() >= m * n);
    assert!((m - 1) * lrs + (k - 1) * lcs < lhs.len());
    assert!((k - 1) * rrs + (n - 1) * rcs < rhs.len());
    let alpha = T::from_f64(if accumulate { 1.0 } else { 0.0 });
    // SAFETY: bounds checked above; dst does not alias lhs/rhs (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lcs as isize,
            lrs as isize,
            rhs.as_ptr(),
            rcs as isize,
            rrs as isize,
            alpha,
            T::from_f64(1.0),
            false,
            false,
            false,
            par,
        )
    }
}

fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// Parallel over the batch (one sample per task, single-threaded gemm) when there are
/// enough samples; otherwise samples run in turn with parallel vol2col and gemm.
fn batch_parallel(n: usize) -> bool {
    let t = threads();
    t > 1 && n >= t
}

fn inner_par(parallel: bool) -> Parallelism {
    if parallel {
        Parallelism::Rayon(threads())
    } else {
        Parallelism::None
    }
}

/// Runs `f(out_n, in_n, scratch, inner_parallel)` for every sample. In batch-parallel
/// mode the batch is cut into one contiguous group per thread, each with a single
/// scratch buffer (allocated once, not per sample).
fn per_sample<T: WithDType>(
    n: usize,
    out: &mut [T],
    out_chunk: usize,
    inp: &[T],
    in_chunk: usize,
    f: impl Fn(&mut [T], &[T], &mut Vec<T>, bool) + Sync + Send,
) {
    let run = |out: &mut [T], inp: &[T], parallel: bool| {
        let mut scratch = Vec::new();
        for (o, i) in out.chunks_mut(out_chunk).zip(inp.chunks(in_chunk)) {
            f(o, i, &mut scratch, parallel);
        }
    };
    if batch_parallel(n) {
        let group = n.div_ceil(threads());
        out.par_chunks_mut(group * out_chunk)
            .zip(inp.par_chunks(group * in_chunk))
            .for_each(|(o, i)| run(o, i, false));
    } else {
        run(out, inp, true);
    }
}

/// y[n] = W · cols(x[n]).
fn fwd_cpu<T: WithDType>(g: &Geom, x: &[T], w: &[T]) -> Vec<T> {
    let (ck, l) = (g.ck(), g.l());
    let mut y = vec![T::from_f64(0.0); g.n * g.o * l];
    per_sample(
        g.n,
        &mut y,
        g.o * l,
        x,
        g.c * g.lin(),
        |yn, xn, scratch, par| {
            let cols = g.cols(xn, scratch, par);
            gemm_into(
                (g.o, l, ck),
                yn,
                w,
                (ck, 1),
                cols,
                (l, 1),
                false,
                inner_par(par),
            );
        },
    );
    y
}

/// dx[n] = col2vol(Wᵀ · dy[n]).
fn bwd_input_cpu<T: WithDType>(g: &Geom, dy: &[T], w: &[T]) -> Vec<T> {
    let (ck, l, lin) = (g.ck(), g.l(), g.lin());
    let zero = T::from_f64(0.0);
    let mut dx = vec![zero; g.n * g.c * lin];
    per_sample(
        g.n,
        &mut dx,
        g.c * lin,
        dy,
        g.o * l,
        |dxn, dyn_, scratch, par| {
            // Wᵀ as lhs: element (ck, o) sits at w[o·CK + ck].
            if g.pointwise() {
                gemm_into(
                    (ck, l, g.o),
                    dxn,
                    w,
                    (1, ck),
                    dyn_,
                    (l, 1),
                    false,
                    inner_par(par),
                );
                return;
            }
            scratch.resize(ck * l, zero);
            gemm_into(
                (ck, l, g.o),
                &mut scratch[..],
                w,
                (1, ck),
                dyn_,
                (l, 1),
                false,
                inner_par(par),
            );
            let rows = g.kvol() * l;
            if par {
                dxn.par_chunks_mut(lin)
                    .zip(scratch.par_chunks(rows))
                    .for_each(|(d, c)| col2vol_channel(g, c, d));
            } else {
                dxn.chunks_mut(lin)
                    .zip(scratch.chunks(rows))
                    .for_each(|(d, c)| col2vol_channel(g, c, d));
            }
        },
    );
    dx
}

/// dW = Σₙ dy[n] · cols(x[n])ᵀ, samples accumulated in order (deterministic); each
/// gemm is parallel over output blocks, never over the summed dimension.
fn bwd_weight_cpu<T: WithDType>(g: &Geom, x: &[T], dy: &[T]) -> Vec<T> {
    let (ck, l) = (g.ck(), g.l());
    let mut dw = vec![T::from_f64(0.0); g.o * ck];
    let mut scratch = Vec::new();
    let parallel = threads() > 1;
    for (i, (xn, dyn_)) in x.chunks(g.c * g.lin()).zip(dy.chunks(g.o * l)).enumerate() {
        let cols = g.cols(xn, &mut scratch, parallel);
        // colsᵀ as rhs: element (l, ck) sits at cols[ck·L + l].
        gemm_into(
            (g.o, ck, l),
            &mut dw,
            dyn_,
            (l, 1),
            cols,
            (1, l),
            i > 0,
            inner_par(parallel),
        );
    }
    dw
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

fn check_layout(op: &str, l: &Layout, want: [usize; 5]) -> candle_core::Result<()> {
    if l.dims() != want {
        return Err(candle_core::Error::Msg(format!(
            "{op}: argument has shape {:?}, expected {want:?}",
            l.dims()
        )));
    }
    Ok(())
}

/// Dispatches a two-argument f32/f64 CPU kernel over the storages.
macro_rules! cpu_dispatch {
    ($op:expr, $s1:expr, $l1:expr, $s2:expr, $l2:expr, $kernel:expr) => {
        match ($s1, $s2) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => {
                CpuStorage::F32($kernel(&dense(a, $l1)[..], &dense(b, $l2)[..]))
            }
            (CpuStorage::F64(a), CpuStorage::F64(b)) => {
                CpuStorage::F64($kernel(&dense(a, $l1)[..], &dense(b, $l2)[..]))
            }
            (a, b) => {
                return Err(candle_core::Error::Msg(format!(
                    "{}: unsupported dtypes {:?} and {:?} (f32/f64 only)",
                    $op,
                    a.dtype(),
                    b.dtype()
                )))
            }
        }
    };
}

/// Forward op: (x, w) -> y.
struct Conv3dFwd(Geom);

impl CustomOp2 for Conv3dFwd {
    fn name(&self) -> &'static str {
        "vssl-conv3d"
    }

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
        let y = cpu_dispatch!(self.name(), s1, l1, s2, l2, |x, w| fwd_cpu(g, x, w));
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
    }
}

/// Input-gradient op: (dy, w) -> dx.
struct Conv3dBwdInput(Geom);

impl CustomOp2 for Conv3dBwdInput {
    fn name(&self) -> &'static str {
        "vssl-conv3d-bwd-input"
    }

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
        let dx = cpu_dispatch!(self.name(), s1, l1, s2, l2, |dy, w| bwd_input_cpu(g, dy, w));
        Ok((dx, Shape::from(g.x_dims().to_vec())))
    }
}

/// Weight-gradient op: (x, dy) -> dw.
struct Conv3dBwdWeight(Geom);

impl CustomOp2 for Conv3dBwdWeight {
    fn name(&self) -> &'static str {
        "vssl-conv3d-bwd-weight"
    }

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
        let dw = cpu_dispatch!(self.name(), s1, l1, s2, l2, |x, dy| bwd_weight_cpu(
            g, x, dy
        ));
        Ok((dw, Shape::from(g.w_dims().to_vec())))
    }
}
