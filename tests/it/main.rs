//! Integration tests: one test binary, one module per concern.
mod backbone;
mod clip_sampling;
mod common;
mod datasets;
mod eval;
mod eval_protocols;
mod import_extract;
mod ops;
mod pretext;
mod recipe;
mod speed_sort;
mod synthetic;
mod temporal_contrast;
mod temporal_discriminative;
mod torchvision;
mod train_e2e;
mod train_parts;
