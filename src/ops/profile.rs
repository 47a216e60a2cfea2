//! Opt-in timing of the CPU kernels, for the per-layer table of `vssl bench model`.
//!
//! Off by default (one relaxed atomic load per kernel call); [`enable`] turns it on
//! for the whole process and [`take`] drains what was recorded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static RECORDS: Mutex<Vec<Record>> = Mutex::new(Vec::new());

/// One kernel call.
#[derive(Debug, Clone)]
pub struct Record {
    /// Kernel name, e.g. `conv3d.fwd`, `conv3d.dx`, `conv3d.dw`, `bn.fwd`.
    pub op: &'static str,
    /// The call's geometry, e.g. `[8,64,8,32,32]->64 k[3,3,3] s[1,1,1]`.
    pub shape: String,
    pub seconds: f64,
    /// Floating-point operations (multiply-add = 2) the call performs.
    pub flops: f64,
}

/// Starts (or stops) recording kernel calls.
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Returns and clears the calls recorded so far.
pub fn take() -> Vec<Record> {
    std::mem::take(&mut *RECORDS.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Runs `f`, recording its time under `op` when profiling is on (`shape` is only
/// evaluated then).
pub(crate) fn timed<R>(
    op: &'static str,
    shape: impl FnOnce() -> String,
    flops: f64,
    f: impl FnOnce() -> R,
) -> R {
    if !ENABLED.load(Ordering::Relaxed) {
        return f();
    }
    let t = Instant::now();
    let r = f();
    let seconds = t.elapsed().as_secs_f64();
    RECORDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Record {
            op,
            shape: shape(),
            seconds,
            flops,
        });
    r
}
