//! Intentionally empty: the linear layer and seeded dropout the method heads share
//! moved to [`crate::nn`] (`nn::Linear`, `nn::dropout`), below `ops` and `pretext`.
//! Nothing is re-exported here; the integrator deletes this file and its `mod` line.
