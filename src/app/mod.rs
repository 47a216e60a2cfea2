//! The application layer: recipe-driven orchestration and what the `vssl` commands do
//! beyond calling one library function, kept out of the component modules
//! (`backbone`, `data`, ...) so those stay libraries. A recipe resolves through the
//! [`registry`](crate::registry) to a dataset, a backbone and a method, which the
//! layers below run without knowing about recipes. Tests and other programs call these
//! directly.
//!
//! - [`train`] / [`eval`]: `vssl train` (recipe -> [`fit`](crate::train::fit)) and
//!   `vssl eval` (run directory -> the [`eval`](crate::eval) protocols);
//! - [`bench`](mod@bench): speed benchmarks against PyTorch and the ffmpeg CLI;
//! - [`import`] / [`extract`]: PyTorch checkpoints in, pooled features out;
//! - [`export`]: a run directory as a Hub model repo folder (weights, config, card);
//! - [`cache`]: building a dataset's frame cache;
//! - [`summary`]: the backbone parameter summary of `vssl recipe --summary`.

pub mod bench;
pub mod cache;
pub mod eval;
pub mod export;
pub mod extract;
pub mod import;
pub mod pth_scan;
pub mod summary;
pub mod train;
