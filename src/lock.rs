//! One writer per run directory: `vssl train`, `vssl eval` and `vssl sweep` hold
//! `<dir>/lock` while they write there, so two jobs of a sweep (or a user and a
//! requeued Slurm job) landing in one directory cannot interleave their checkpoints,
//! metrics and results.
//!
//! The lock file is created by `link(2)` of a private temp file, which is atomic on
//! local disks and on NFS, Lustre and GPFS alike (`O_EXCL` and `flock` are not
//! reliable on every NFS); it records pid, host, process start time and a random
//! token. A lock is stale when its holder is gone: on this host the pid is dead (or
//! is another process now), on another host the holder has not refreshed the file's
//! modification time for [`STALE_SECS`] (holders refresh it every [`REFRESH_SECS`];
//! this assumes the hosts' clocks agree to within minutes, as NTP keeps them). A
//! stale lock is taken over with a warning (renamed aside first, so only one
//! contender wins); a live one is refused with an error naming its holder.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::process::{alive, host, now, proc_start};
use crate::run_dir::LOCK_FILE;
use crate::{Error, Result};

/// A lock on another host untouched for this long is stale.
pub const STALE_SECS: u64 = 300;
/// Holders refresh the lock's modification time this often.
pub const REFRESH_SECS: u64 = 30;

/// What a lock file says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    #[serde(default)]
    pub proc_start: Option<u64>,
    /// What holds it (`vssl train`, ...).
    pub what: String,
    /// Unix time it was taken.
    pub since: u64,
    pub token: String,
}

/// A held lock; released (the file removed, if still ours) on drop.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    token: String,
    stop: Arc<AtomicBool>,
}

fn read_holder(path: &Path) -> Option<Holder> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn age_secs(path: &Path) -> Option<u64> {
    let m = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(
        SystemTime::now()
            .duration_since(m)
            .unwrap_or_default()
            .as_secs(),
    )
}

/// Why a holder no longer holds, or `None` when it is live.
fn stale_reason(h: &Holder, path: &Path) -> Option<String> {
    if h.host == host() {
        (!alive(h.pid, h.proc_start)).then(|| format!("process {} is gone", h.pid))
    } else {
        let age = age_secs(path).unwrap_or(0);
        (age >= STALE_SECS).then(|| format!("not refreshed for {age} s"))
    }
}

impl RunLock {
    /// Takes `<dir>/lock` for `what` (creating `dir`), taking over a stale lock with a
    /// warning; a live holder is an error naming its pid and host.
    pub fn acquire(dir: &Path, what: &str) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(LOCK_FILE);
        let token = format!(
            "{:016x}",
            crate::seed::mix(
                now()
                    ^ ((std::process::id() as u64) << 32)
                    ^ crate::seed::hash_str(&dir.display().to_string())
            )
        );
        let me = Holder {
            pid: std::process::id(),
            host: host(),
            proc_start: proc_start(),
            what: what.to_string(),
            since: now(),
            token: token.clone(),
        };
        let text = serde_json::to_string(&me).map_err(|e| Error::Internal(e.to_string()))?;
        let tmp = dir.join(format!(".lock.{}.{}", me.pid, &token[..8]));
        std::fs::write(&tmp, &text).map_err(|e| Error::io(&tmp, e))?;
        let result = (|| {
            for _ in 0..3 {
                match std::fs::hard_link(&tmp, &path) {
                    Ok(()) => return Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(Error::io(&path, e)),
                }
                let Some(h) = read_holder(&path) else {
                    // Unreadable: being written right now, or garbage. Garbage older
                    // than the stale limit is taken over.
                    if age_secs(&path).unwrap_or(0) >= STALE_SECS {
                        tracing::warn!("{}: unreadable lock file; taking it over", path.display());
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                    return Err(Error::BadInput(format!(
                        "{}: the run directory is locked (unreadable lock file; remove it if \
                         no job uses the directory)",
                        path.display()
                    )));
                };
                match stale_reason(&h, &path) {
                    None => {
                        return Err(Error::BadInput(format!(
                            "{} is in use by pid {} on host {} ({}, since {} s ago); wait for \
                             it, or write elsewhere (--out)",
                            dir.display(),
                            h.pid,
                            h.host,
                            h.what,
                            now().saturating_sub(h.since)
                        )))
                    }
                    Some(why) => {
                        // Rename aside first: of two contenders only one succeeds.
                        let aside = dir.join(format!(".lock.stale.{}", token));
                        if std::fs::rename(&path, &aside).is_ok() {
                            let _ = std::fs::remove_file(&aside);
                            tracing::warn!(
                                "{}: taking over the stale lock of pid {} on host {} ({why})",
                                dir.display(),
                                h.pid,
                                h.host
                            );
                        }
                    }
                }
            }
            Err(Error::BadInput(format!(
                "{}: could not take the lock (another job keeps taking it)",
                path.display()
            )))
        })();
        let _ = std::fs::remove_file(&tmp);
        result?;
        let stop = Arc::new(AtomicBool::new(false));
        {
            // Refresh the modification time so other hosts see the holder is alive.
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::Builder::new()
                .name("vssl-lock".into())
                .spawn(move || {
                    let mut waited = 0;
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(500));
                        waited += 1;
                        if waited * 500 >= REFRESH_SECS * 1000 {
                            waited = 0;
                            if let Ok(f) = std::fs::File::options().append(true).open(&path) {
                                let _ = f.set_modified(SystemTime::now());
                            }
                        }
                    }
                })
                .map_err(|e| Error::Internal(format!("lock refresh thread: {e}")))?;
        }
        Ok(Self { path, token, stop })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if read_holder(&self.path).is_some_and(|h| h.token == self.token) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_locks_refuse_and_release_on_drop() {
        let d = tempfile::tempdir().unwrap();
        let l = RunLock::acquire(d.path(), "test").unwrap();
        let e = RunLock::acquire(d.path(), "second")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("pid {}", std::process::id())) && e.contains(&host()),
            "{e}"
        );
        drop(l);
        assert!(!d.path().join(LOCK_FILE).exists());
        RunLock::acquire(d.path(), "third").unwrap();
    }
}
