//! The run directory's list of bad videos: the trainer and the downstream protocols
//! skip videos that cannot be decoded (or are too short) and keep going; each distinct
//! one is warned about once and written, with the reason, to `<run>/bad_videos.txt`
//! as soon as it is found, so a crash keeps the list.

use std::io::Write;
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

    /// Appends the reasons not seen before, warning once for each. The file is read
    /// again before a new line goes in: the ranks of a data-parallel run share it, and
    /// a video another rank already listed is not listed twice (two ranks finding the
    /// same video at the same moment can still both write it).
    pub fn record(&mut self, reasons: &[String]) -> Result<()> {
        for r in reasons {
            let line = r.replace('\n', " ");
            if self.seen.contains(&line) {
                continue;
            }
            if let Ok(t) = std::fs::read_to_string(&self.path) {
                self.seen.extend(t.lines().map(str::to_string));
            }
            if self.seen.insert(line.clone()) {
                tracing::warn!(
                    "skipping bad video (listed in {}): {line}",
                    self.path.display()
                );
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .map_err(|e| Error::io(&self.path, e))?;
                writeln!(f, "{line}").map_err(|e| Error::io(&self.path, e))?;
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
}
