//! Integration tests: one test binary, one module per concern.
mod augment;
mod backbone;
mod cache;
mod common;
mod eval;
mod eval_protocols;
mod import_extract;
mod ops;
mod pretext;
mod recipe;
mod speed_sort;
mod synthetic;
mod torchvision;
mod train_e2e;
mod train_parts;
