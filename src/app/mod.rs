//! The application layer: recipe-driven orchestration over the library. A recipe
//! resolves through the [`registry`](crate::registry) to a dataset, a backbone
//! and a method, which the layers below run without knowing about recipes
//! ([`train::fit`](crate::train::fit), the [`eval`](crate::eval) protocols).

pub mod eval;
pub mod train;
