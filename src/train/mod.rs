//! Training: one loop for every objective (pretraining and fine-tuning), with
//! checkpointable optimisers, learning-rate schedules and atomic safetensors
//! checkpoints. [`fit`] pretrains any [`Pretext`](crate::pretext::Pretext) the
//! caller built; [`update`] is the crate's single backward + optimiser step.

pub mod config;
pub mod engine;
pub mod monitor;
pub mod optim;
pub mod parallel;
pub mod resume;
pub mod schedule;
mod sgd_cpu;
pub mod trainer;

pub use config::{OnNonFinite, Precision, TrainConfig};
pub use engine::{update, LoaderConfig, LoopConfig, Objective, ParamGroup};
pub use trainer::{fit, FitOptions, TrainSummary};
