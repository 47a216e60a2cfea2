//! Integration tests: one test binary, one module per concern.
mod backbone;
mod common;
mod compare;
mod eval;
mod eval_protocols;
mod import_extract;
mod ops;
mod pretext;
mod recipe;
mod speed_sort;
mod sweep;
mod synthetic;
mod torchvision;
mod train_e2e;
mod train_parts;
