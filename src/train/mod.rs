//! Training: one trainer for every method, with checkpointable optimisers,
//! learning-rate schedules and atomic safetensors checkpoints.

pub mod optim;
pub mod schedule;
mod sgd_cpu;
pub mod trainer;
