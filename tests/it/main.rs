//! Integration tests: one test binary, one module per concern.
mod alloc;
mod augment;
mod backbone;
mod bad_input;
mod block;
mod cache;
mod clip_decode;
mod clip_sampling;
mod common;
mod compare;
mod cuda_launch;
mod data_parallel;
mod datasets;
mod eval;
mod eval_protocols;
mod fuzz_replay;
mod hub;
mod hub_server;
mod import_extract;
mod layers;
mod loader_faults;
mod loss_parity;
mod nonfinite;
mod ops;
mod outside_method;
mod paper_recipes;
mod precision;
mod pretext;
mod properties;
mod recipe;
mod resume_safety;
mod run_lock;
mod speed_sort;
mod sweep;
mod synthetic;
mod telemetry;
mod temporal_contrast;
mod temporal_discriminative;
mod torchvision;
mod train_e2e;
mod train_parts;
mod write_failure;

// The binary's allocator, so every test below runs on it too.
#[global_allocator]
static ALLOC: vssl::alloc::TensorAlloc = vssl::alloc::TensorAlloc;
