//! The run directory's list of bad videos: the trainer and the downstream protocols
//! skip videos that cannot be decoded (or are too short) and keep going; each distinct
//! one is warned about once and written, with the reason, to `<run>/bad_videos.txt`
//! as soon as it is found, so a crash keeps the list.

use std::io::{Read, Write};
use std::path::PathBuf;

use crate::run_dir::RunDir;
use crate::{Error, Result};

/// `<run>/bad_videos.txt`: one line per distinct video the loader had to skip, with
/// the reason, appended as they occur (so a crash keeps what was found).
pub struct BadVideos {
    path: PathBuf,
    seen: std::collections::HashSet<String>,
}

impl BadVideos {
    /// Reads the lines of an earlier (resumed) run so they are not repeated.
    pub fn open(run: &RunDir) -> Self {
        let path = run.bad_videos();
        let seen = std::fs::read_to_string(&path)
            .map(|t| t.lines().map(str::to_string).collect())
            .unwrap_or_default();
        Self { path, seen }
    }

    /// Appends the reasons not seen before, warning once for each. The ranks of a
    /// data-parallel run share the file: under an exclusive lock on it, the file is
    /// read again before a new line goes in, so a video another rank already listed
    /// (even at the same moment) is not listed twice.
    pub fn record(&mut self, reasons: &[String]) -> Result<()> {
        let io = |e| Error::io(&self.path, e);
        for r in reasons {
            let line = r.replace('\n', " ");
            if self.seen.contains(&line) {
                continue;
            }
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&self.path)
                .map_err(io)?;
            // Advisory (flock): held until `f` closes at the end of this iteration.
            f.lock().map_err(io)?;
            let mut text = String::new();
            f.read_to_string(&mut text).map_err(io)?;
            self.seen.extend(text.lines().map(str::to_string));
            if self.seen.insert(line.clone()) {
                tracing::warn!(
                    "skipping bad video (listed in {}): {line}",
                    self.path.display()
                );
                writeln!(f, "{line}").map_err(io)?;
            }
        }
        Ok(())
    }

    /// Distinct bad videos recorded (including those of an earlier, resumed run).
    pub fn count(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two ranks sharing a run directory list a video once, whichever found it first.
    #[test]
    fn ranks_sharing_the_file_list_each_video_once() {
        let d = tempfile::tempdir().unwrap();
        let run = RunDir::new(d.path());
        let (mut a, mut b) = (BadVideos::open(&run), BadVideos::open(&run));
        a.record(&["v1.avi: no video stream".into()]).unwrap();
        b.record(&["v1.avi: no video stream".into(), "v2.avi: too short".into()])
            .unwrap();
        a.record(&["v2.avi: too short".into()]).unwrap();
        let text = std::fs::read_to_string(run.bad_videos()).unwrap();
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            ["v1.avi: no video stream", "v2.avi: too short"]
        );
        assert_eq!((a.count(), b.count()), (2, 2));
    }

    /// Ranks finding the same bad videos at the same moment still list each once.
    #[test]
    fn ranks_finding_a_video_at_once_list_it_once() {
        let d = tempfile::tempdir().unwrap();
        let run = RunDir::new(d.path());
        let reasons: Vec<String> = (0..40).map(|i| format!("v{i}.avi: too short")).collect();
        let start = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let mut rank = BadVideos::open(&run);
                    start.wait();
                    for r in &reasons {
                        rank.record(std::slice::from_ref(r)).unwrap();
                    }
                });
            }
        });
        let text = std::fs::read_to_string(run.bad_videos()).unwrap();
        assert_eq!(text.lines().collect::<Vec<_>>(), reasons);
    }
}
