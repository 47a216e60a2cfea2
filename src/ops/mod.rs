//! 3D primitives candle lacks: conv3d, pool3d, batch_norm3d.
//!
//! Every op takes NCTHW tensors (`[N, C, T, H, W]`), supports candle autograd and
//! runs on any device: CPU gets custom kernels where they pay off, other devices
//! (CUDA) a path built only from candle tensor ops.
pub mod batch_norm3d;
pub mod block;
mod bn_cpu;
pub mod collective;
pub mod conv3d;
pub(crate) mod dispatch;
pub mod fused;
pub mod grad_sink;
pub mod pool3d;
pub mod profile;
pub mod tgn;

pub use batch_norm3d::BatchNorm3d;
pub use conv3d::{
    conv3d, conv3d_cpu_kernels, conv3d_generic, conv3d_generic_chunked, Conv3d, Conv3dConfig,
};
pub use pool3d::{adaptive_avg_pool3d, avg_pool3d, global_avg_pool3d, max_pool3d};

use candle_core::Tensor;

use crate::{Error, Result};

/// A shape/argument error raised by an op, prefixed with the op's name. Shapes reaching
/// an op come from the library's own layers (recipes are validated before a model is
/// built), so a mismatch is a bug: an internal error (exit code 1), not bad input.
pub(crate) fn op_error(op: &str, msg: impl std::fmt::Display) -> Error {
    Error::Internal(format!("{op}: {msg}"))
}

/// Whether `t` holds half-precision floats (bf16, f16): mixed-precision activations.
pub(crate) fn is_half(t: &Tensor) -> bool {
    matches!(
        t.dtype(),
        candle_core::DType::BF16 | candle_core::DType::F16
    )
}

/// The dims of a rank-5 NCTHW tensor, or an error naming `op` and the actual shape.
pub(crate) fn dims5(op: &str, what: &str, t: &Tensor) -> Result<[usize; 5]> {
    match *t.dims() {
        [a, b, c, d, e] => Ok([a, b, c, d, e]),
        _ => Err(op_error(
            op,
            format!(
                "{what} must have rank 5 [N, C, T, H, W], got shape {:?}",
                t.dims()
            ),
        )),
    }
}
