//! What a run tells the people watching it, beyond `metrics.jsonl`: TensorBoard
//! event files (`<run>/tb/`), the run-state file (`state.json`: running, finished,
//! failed, interrupted) and progress on stderr. It sits just above the run-directory
//! layout, so the training loop, evaluation, sweeps and reports can all use it.
//!
//! The event-file format is written here rather than through the `tboard` crate:
//! `tboard` 0.1 generates its protobuf code with `prost-build` at build time, which
//! needs a `protoc` binary on every machine that builds vssl (CI included), pulls
//! `prost`, `anyhow` with backtraces and an old `thiserror` into the build, and has
//! no text summaries (the recipe is logged as text). The subset vssl needs is a
//! CRC-32C, a record frame and three hand-encoded messages ([`record`], [`event`]),
//! checked against bytes from TensorBoard's own Python writer in the tests.

pub mod event;
pub mod progress;
pub mod record;
pub mod state;
pub mod writer;

pub use progress::Progress;
pub use state::{Phase, RunState, StateFile};
pub use writer::{read_events, EventWriter};
