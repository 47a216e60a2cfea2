//! vssl: self-supervised video representation learning on candle.
//!
//! Data flows one way: a TOML [`recipe`] resolves (through the [`registry`]) to a
//! dataset, a [`backbone`] and a [`pretext`] method; the [`train`] module runs any
//! method and writes safetensors into a run directory; the [`eval`] protocols
//! measure the learned backbone downstream.
//!
//! Run directory layout (`weights/<run>/`, spelled once in [`run_dir`]):
//! - `recipe.resolved.toml`: the fully resolved recipe;
//! - `model.safetensors`: backbone (torchvision names) + method heads (`pretext.*`),
//!   metadata `format = "pt"`, `recipe` (resolved TOML), `step`, `vssl_version`;
//! - `checkpoints/step-NNNNNNNN.safetensors`: resumable state (`model.*`, `optim.*`,
//!   `method.*`; metadata holds step, seed and the recipe);
//! - `metrics.jsonl`: one JSON line per logged step;
//! - `eval/<protocol>[-random].json`: downstream results.
//!
//! [`sweep`] expands one sweep file into many such runs (locally or as a Slurm job
//! array) and [`report`] compares them in tables and plots.

pub mod app;
pub mod backbone;
pub mod data;
pub mod error;
pub mod eval;
pub mod io;
pub mod loss;
pub mod nn;
pub mod ops;
pub mod pretext;
pub mod recipe;
pub mod registry;
pub mod report;
pub mod run_dir;
pub mod seed;
pub mod sweep;
pub mod train;

pub use error::{Error, Result};
