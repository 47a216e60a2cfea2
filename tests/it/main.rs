//! Integration tests: one test binary, one module per concern.
mod common;
mod eval;
mod ops;
mod pretext;
mod recipe;
mod synthetic;
mod train_e2e;
mod train_parts;
