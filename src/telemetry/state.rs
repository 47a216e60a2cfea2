//! The run-state file (`state.json`): what a run directory says about the process
//! training it, so `vssl runs` can tell running from finished, failed and
//! interrupted from the directory alone. The loop writes it when it starts, as a
//! heartbeat while it runs, and when it ends (finished, stopped early, or failed
//! with the error); a process killed outright (SIGKILL, power loss) leaves it at
//! `running`, and the reader decides: on this host the recorded pid must still be
//! the same live process (its start time in `/proc` matches), on another host the
//! heartbeat must be recent ([`STALE_SECS`]).

use serde::{Deserialize, Serialize};

use crate::process::{alive, proc_start};
pub use crate::process::{host, now};
use crate::run_dir::{replace_file, RunDir};
use crate::{Error, Result};

/// A heartbeat older than this, from another host, means the run is gone.
pub const STALE_SECS: u64 = 600;
/// The loop rewrites the file at most this often between its start and its end.
const HEARTBEAT_SECS: u64 = 5;

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Running,
    Finished,
    Failed,
    /// Stopped before its last step: killed, or stopped on purpose (`--stop-after`).
    Interrupted,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Finished => "finished",
            Phase::Failed => "failed",
            Phase::Interrupted => "interrupted",
        }
    }
}

/// The contents of `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub state: Phase,
    pub pid: u32,
    pub host: String,
    /// The process's start time (clock ticks since boot, `/proc/<pid>/stat` field
    /// 22), so a recycled pid is not mistaken for the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proc_start: Option<u64>,
    /// Unix seconds.
    pub started: u64,
    /// Unix seconds of the last write (the heartbeat).
    pub updated: u64,
    /// Steps done.
    pub step: u64,
    pub total: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RunState {
    /// The run's `state.json`, if it has one.
    pub fn read(run: &RunDir) -> Result<Option<RunState>> {
        let path = run.state();
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::BadInput(format!("{}: {e}", path.display())))
    }

    fn write(&self, run: &RunDir) -> Result<()> {
        let text =
            serde_json::to_string_pretty(self).map_err(|e| Error::Internal(e.to_string()))?;
        replace_file(&run.state(), format!("{text}\n").as_bytes())
    }

    /// The phase as seen now from this host: a `running` file whose process is
    /// gone reads as interrupted.
    pub fn observed(&self, here: &str, now: u64) -> Phase {
        if self.state != Phase::Running {
            return self.state;
        }
        let gone = if self.host == here {
            !alive(self.pid, self.proc_start)
        } else {
            now.saturating_sub(self.updated) > STALE_SECS
        };
        if gone {
            Phase::Interrupted
        } else {
            Phase::Running
        }
    }
}

/// The training loop's handle on `state.json`. Dropped without [`finish`](Self::finish)
/// (a panic unwinding through the loop), it records the run as failed.
pub struct StateFile {
    run: RunDir,
    state: RunState,
    written: u64,
    done: bool,
}

impl StateFile {
    /// Records this process as running `run` from `step` of `total`.
    pub fn start(run: &RunDir, step: u64, total: u64) -> Result<Self> {
        let t = now();
        let state = RunState {
            state: Phase::Running,
            pid: std::process::id(),
            host: host(),
            proc_start: proc_start(),
            started: t,
            updated: t,
            step,
            total,
            error: None,
        };
        state.write(run)?;
        Ok(Self {
            run: run.clone(),
            state,
            written: t,
            done: false,
        })
    }

    /// Step `step` is done; rewrites the file when the last write is a few seconds old.
    pub fn heartbeat(&mut self, step: u64) -> Result<()> {
        self.state.step = step;
        let t = now();
        if t.saturating_sub(self.written) >= HEARTBEAT_SECS {
            self.state.updated = t;
            self.state.write(&self.run)?;
            self.written = t;
        }
        Ok(())
    }

    /// The run ended: `Finished` or `Interrupted` at `step`, or `Failed` with `error`.
    pub fn finish(mut self, phase: Phase, step: u64, error: Option<String>) -> Result<()> {
        self.done = true;
        self.state.state = phase;
        self.state.step = step;
        self.state.updated = now();
        self.state.error = error;
        self.state.write(&self.run)
    }
}

impl Drop for StateFile {
    fn drop(&mut self) {
        if !self.done {
            self.state.state = Phase::Failed;
            self.state.updated = now();
            self.state.error = Some("the training loop panicked".into());
            let _ = self.state.write(&self.run);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(pid: u32, host: &str, updated: u64) -> RunState {
        RunState {
            state: Phase::Running,
            pid,
            host: host.into(),
            proc_start: None,
            started: 0,
            updated,
            step: 1,
            total: 2,
            error: None,
        }
    }

    #[test]
    fn running_means_a_live_process_or_a_fresh_heartbeat() {
        let here = host();
        let me = std::process::id();
        assert_eq!(state(me, &here, 0).observed(&here, 10), Phase::Running);
        let mut recycled = state(me, &here, 0);
        recycled.proc_start = proc_start().map(|s| s + 1);
        assert_eq!(recycled.observed(&here, 10), Phase::Interrupted);
        // pid_max on Linux is at most 2^22: this pid never exists.
        assert_eq!(
            state(u32::MAX - 1, &here, 0).observed(&here, 10),
            Phase::Interrupted
        );
        let far = state(1, "elsewhere", 1000);
        assert_eq!(far.observed(&here, 1000 + STALE_SECS), Phase::Running);
        assert_eq!(far.observed(&here, 1001 + STALE_SECS), Phase::Interrupted);
        let mut failed = far.clone();
        failed.state = Phase::Failed;
        assert_eq!(failed.observed(&here, 0), Phase::Failed);
    }

    #[test]
    fn start_finish_and_a_panic_are_recorded() {
        let d = tempfile::tempdir().unwrap();
        let run = RunDir::new(d.path());
        assert_eq!(RunState::read(&run).unwrap(), None);
        let f = StateFile::start(&run, 3, 10).unwrap();
        let s = RunState::read(&run).unwrap().unwrap();
        assert_eq!((s.state, s.step, s.total), (Phase::Running, 3, 10));
        assert_eq!(s.observed(&host(), now()), Phase::Running);
        f.finish(Phase::Finished, 10, None).unwrap();
        assert_eq!(
            RunState::read(&run).unwrap().unwrap().state,
            Phase::Finished
        );
        drop(StateFile::start(&run, 0, 10).unwrap());
        let s = RunState::read(&run).unwrap().unwrap();
        assert_eq!(s.state, Phase::Failed);
        assert!(s.error.unwrap().contains("panicked"));
        std::fs::write(run.state(), "{").unwrap();
        let err = RunState::read(&run).unwrap_err();
        assert!(
            err.is_bad_input() && err.to_string().contains("state.json"),
            "{err}"
        );
    }
}
