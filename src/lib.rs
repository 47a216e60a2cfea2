//! vssl: self-supervised video representation learning on candle.
//!
//! Data flows one way:
//!
//! ```text
//! recipe TOML --figment--> Recipe --registry--> {dataset, backbone, method}
//! video files --decode / cache--> frames --method's clip plan + augment--> Batch
//! Batch --method.step--> loss --the one training loop (train::fit)--> RunDir
//! RunDir --eval protocols--> eval/*.json --report--> tables, plots
//! ```
//!
//! # Layers
//!
//! A module imports only from modules of strictly lower layers; `tests/it/layers.rs`
//! reads this table and fails, naming the file and the edge, when an import breaks it.
//!
//! | layer | modules | holds |
//! | --- | --- | --- |
//! | 0 | `error`, `alloc` | the typed [`Error`]; the tensor-friendly global allocator |
//! | 1 | `seed`, `io`, `run_dir`, `process` | counter-based seeding and hashing; safetensors read / atomic write; the run-directory layout ([`run_dir::RunDir`]: every file name lives there); host, pid start time and liveness |
//! | 2 | `nn`, `hub`, `telemetry`, `lock` | parameter store (trainable vs buffers, load report), `Linear`, dropout; the Hugging Face Hub: names, cache, verified downloads, pushes, the weights index ([`hub::resolve`]); TensorBoard event files, the run-state file, progress lines; the run-directory lock |
//! | 3 | `ops` | 3D layers and kernels candle lacks (conv3d, pool3d, BN3d, TGN, fused epilogues) |
//! | 4 | `backbone`, `data`, `loss` | C3D / R3D / MC3 / R(2+1)D with their configs; decoding, datasets, the clip vocabulary, augmentation, cache, loader; pure losses |
//! | 5 | `pretext` | the [`pretext::Pretext`] trait, the four family traits with one adapter each, the shipped methods with their configs |
//! | 6 | `train` | the one training loop ([`train::fit`]), objectives, optimisers, schedules, checkpoints, `TrainConfig` |
//! | 7 | `eval` | linear probe, retrieval, fine-tuning (an objective on the training loop), multi-clip features |
//! | 8 | `registry` | config enums -> built components (datasets, backbones, methods) |
//! | 9 | `recipe` | figment layering, the [`recipe::Recipe`] aggregate, cross-section checks |
//! | 10 | `app` | recipe-driven commands: train and evaluate from a recipe, bench, import, extract, export, cache building |
//! | 11 | `report` | comparison tables and plots over run directories |
//! | 12 | `sweep` | grid/zip expansion, local and Slurm executors |
//! | 13 | `fuzzing` | one entry point per `cargo fuzz` target (`fuzz/`), shared with their replay test |
//!
//! `nn` sits below `ops` because the layers in `ops` own their parameters through the
//! `nn` store; `registry` sits below `recipe` so that it builds components from their
//! own configs and a recipe is only their aggregate. The `vssl` binary (`src/main.rs`,
//! one module per subcommand under `src/cli/`) is a thin layer over [`app`].

pub mod alloc;
pub mod app;
pub mod backbone;
pub mod data;
pub mod error;
pub mod eval;
#[doc(hidden)]
pub mod fuzzing;
pub mod hub;
pub mod io;
pub mod lock;
pub mod loss;
pub mod nn;
pub mod ops;
pub mod pretext;
pub mod process;
pub mod recipe;
pub mod registry;
pub mod report;
pub mod run_dir;
pub mod seed;
pub mod sweep;
pub mod telemetry;
pub mod train;

pub use error::{Error, Result};
