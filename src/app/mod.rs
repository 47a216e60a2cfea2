//! Application layer: what the `vssl` commands do beyond calling one library function,
//! kept out of the component modules (`backbone`, `data`, ...) so those stay
//! libraries. Tests and other programs call these directly.
//!
//! - [`bench`]: speed benchmarks against PyTorch and the ffmpeg CLI;
//! - [`import`] / [`extract`]: PyTorch checkpoints in, pooled features out;
//! - [`cache`]: building a dataset's frame cache;
//! - [`summary`]: the backbone parameter summary of `vssl recipe --summary`.

pub mod bench;
pub mod cache;
pub mod extract;
pub mod import;
pub mod summary;
