//! 3D pooling over NCTHW tensors, with PyTorch semantics.
//!
//! candle's `max_pool2d`/`avg_pool2d` have no padding, no third axis, and their
//! backward passes assume kernel == stride, so video backbones cannot use them. These
//! ops are composed from candle tensor ops only (pad/cat, index_select, reshape,
//! max/mean, matmul), so they run on every device and get autograd from candle.
//!
//! All of them are separable: a 3D box max (or mean) is the max (mean) along W, then
//! along H, then along T. Each axis is pooled by gathering its windows with one
//! `index_select` into `[.., out, k, ..]` and reducing the `k` axis.

use candle_core::Tensor;

use super::{dims5, op_error};
use crate::Result;

/// Max pooling with PyTorch's `nn.MaxPool3d` semantics (floor mode): padding acts as
/// −∞ and may be at most half the kernel. `x`: `[N, C, T, H, W]`.
pub fn max_pool3d(
    x: &Tensor,
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
) -> Result<Tensor> {
    let out = pool_out("max_pool3d", x, kernel, stride, padding)?;
    let mut y = x.clone();
    for ax in (0..3).rev() {
        let dim = 2 + ax;
        let p = padding[ax];
        if p > 0 {
            let mut dims = y.dims().to_vec();
            dims[dim] = p;
            let fill = Tensor::full(f32::NEG_INFINITY, dims, y.device())?.to_dtype(y.dtype())?;
            y = Tensor::cat(&[&fill, &y, &fill], dim)?;
        }
        if let Some(w) = windows(&y, dim, kernel[ax], stride[ax], out[ax])? {
            y = w.max(dim + 1)?;
        }
    }
    Ok(y)
}

/// Average pooling with PyTorch's `nn.AvgPool3d` defaults (floor mode,
/// `count_include_pad=True`: zero padding counts in the divisor kt·kh·kw).
pub fn avg_pool3d(
    x: &Tensor,
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
) -> Result<Tensor> {
    let out = pool_out("avg_pool3d", x, kernel, stride, padding)?;
    let mut y = x.clone();
    for ax in (0..3).rev() {
        let dim = 2 + ax;
        // Zero padding with a fixed divisor k per axis is exactly count_include_pad.
        y = y.pad_with_zeros(dim, padding[ax], padding[ax])?;
        if let Some(w) = windows(&y, dim, kernel[ax], stride[ax], out[ax])? {
            y = w.mean(dim + 1)?;
        }
    }
    Ok(y)
}

/// Adaptive average pooling to `out` = `[T', H', W']` with PyTorch's windows: output
/// `i` averages input `floor(i·L/out) .. ceil((i+1)·L/out)`.
pub fn adaptive_avg_pool3d(x: &Tensor, out: [usize; 3]) -> Result<Tensor> {
    const OP: &str = "adaptive_avg_pool3d";
    let d = dims5(OP, "input", x)?;
    if out.contains(&0) {
        return Err(op_error(
            OP,
            format!("output size {out:?} must be positive"),
        ));
    }
    if d[2..].contains(&0) {
        return Err(op_error(
            OP,
            format!("input {d:?} has an empty spatio-temporal axis"),
        ));
    }
    let mut y = x.clone();
    for ax in (0..3).rev() {
        let dim = 2 + ax;
        let (len, o) = (d[dim], out[ax]);
        if o == len {
            continue;
        }
        if len.is_multiple_of(o) {
            // Equal non-overlapping windows: a reshape and a mean.
            let mut dims = y.dims().to_vec();
            dims[dim] = o;
            dims.insert(dim + 1, len / o);
            y = y.reshape(dims)?.mean(dim + 1)?;
        } else {
            y = pool_matrix(&y, dim, o)?;
        }
    }
    Ok(y)
}

/// Mean over T, H and W: `[N, C, T, H, W]` -> `[N, C]`.
pub fn global_avg_pool3d(x: &Tensor) -> Result<Tensor> {
    dims5("global_avg_pool3d", "input", x)?;
    Ok(x.flatten_from(2)?.mean(2)?)
}

/// Validates a pooling call and returns the output sizes (T', H', W').
fn pool_out(
    op: &str,
    x: &Tensor,
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
) -> Result<[usize; 3]> {
    let d = dims5(op, "input", x)?;
    if kernel.contains(&0) || stride.contains(&0) {
        return Err(op_error(
            op,
            format!("kernel {kernel:?} and stride {stride:?} must be positive"),
        ));
    }
    let mut out = [0; 3];
    for ax in 0..3 {
        if 2 * padding[ax] > kernel[ax] {
            return Err(op_error(
                op,
                format!("padding {padding:?} must be at most half the kernel {kernel:?} (as in PyTorch)"),
            ));
        }
        let padded = d[2 + ax] + 2 * padding[ax];
        if padded < kernel[ax] {
            return Err(op_error(
                op,
                format!("input {d:?}: axis {} of size {padded} (padded) is smaller than the kernel {kernel:?}",
                    ["T", "H", "W"][ax]),
            ));
        }
        out[ax] = (padded - kernel[ax]) / stride[ax] + 1;
    }
    Ok(out)
}

/// Gathers the pooling windows of (already padded) axis `dim`: `[.., L, ..]` ->
/// `[.., out, k, ..]`, window `o` holding indices `o·s .. o·s + k`. `None` when the
/// pooling along this axis is the identity (k = 1, s = 1).
fn windows(x: &Tensor, dim: usize, k: usize, s: usize, out: usize) -> Result<Option<Tensor>> {
    if k == 1 && s == 1 {
        return Ok(None);
    }
    let mut dims = x.dims().to_vec();
    dims[dim] = out;
    dims.insert(dim + 1, k);
    let gathered = if k == s {
        // Non-overlapping windows: drop the tail and split the axis, no gather needed.
        x.narrow(dim, 0, out * k)?
    } else {
        let idx: Vec<u32> = (0..out)
            .flat_map(|o| (0..k).map(move |a| (o * s + a) as u32))
            .collect();
        let idx = Tensor::from_vec(idx, out * k, x.device())?;
        x.contiguous()?.index_select(&idx, dim)?
    };
    Ok(Some(gathered.reshape(dims)?))
}

/// Adaptive average along `dim` as a matmul with the `[out, L]` pooling matrix (rows
/// hold 1/|window| over each PyTorch window), for window layouts a reshape can't do.
fn pool_matrix(x: &Tensor, dim: usize, out: usize) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let len = dims[dim];
    let pre: usize = dims[..dim].iter().product();
    let post: usize = dims[dim + 1..].iter().product();
    let mut m = vec![0f64; out * len];
    for i in 0..out {
        let (start, end) = (i * len / out, ((i + 1) * len).div_ceil(out));
        for j in start..end {
            m[i * len + j] = 1.0 / (end - start) as f64;
        }
    }
    let dev = x.device();
    let y = if post == 1 {
        // [pre, L] · Mᵀ
        let mt: Vec<f64> = (0..len * out)
            .map(|r| m[(r % out) * len + r / out])
            .collect();
        let mt = Tensor::from_vec(mt, (len, out), dev)?.to_dtype(x.dtype())?;
        x.reshape((pre, len))?.matmul(&mt)?
    } else {
        // M · [pre, L, post]
        let m = Tensor::from_vec(m, (out, len), dev)?.to_dtype(x.dtype())?;
        m.broadcast_matmul(&x.reshape((pre, len, post))?)?
    };
    let mut new_dims = dims;
    new_dims[dim] = out;
    Ok(y.reshape(new_dims)?)
}
