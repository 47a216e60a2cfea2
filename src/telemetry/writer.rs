//! TensorBoard event files under `<run>/tb/`: one new file per process (named as
//! TensorBoard's own writers name them), scalars and text, each record written
//! through to the file so a running TensorBoard sees it at once.
//!
//! A resumed run (or a repeated evaluation) would leave two values of one tag at one
//! step across files. Before a new file is opened, the events the caller calls stale
//! are dropped from the older files (each rewritten through a temporary file): on
//! resume those after the checkpoint's step, on evaluation the tags about to be
//! written again. So every reader sees one value per tag and step.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::event::{Event, What};
use super::record::{frame, read_all};
use super::state::host;
use crate::run_dir::{replace_file, RunDir};
use crate::{Error, Result};

/// Writes one event file.
pub struct EventWriter {
    path: PathBuf,
    file: File,
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Distinguishes files one process opens within one second.
static OPENED: AtomicU64 = AtomicU64::new(0);

/// The events of every event file of a run, file by file (oldest name first);
/// records of other writers' kinds are left out.
pub fn read_events(run: &RunDir) -> Result<Vec<(PathBuf, Vec<Event>)>> {
    run.tb_event_files()
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
            let events = read_all(&bytes, &p)?
                .iter()
                .filter_map(|r| Event::decode(r))
                .collect();
            Ok((p, events))
        })
        .collect()
}

/// Drops the events `stale` picks from the event files of `run`.
fn purge(run: &RunDir, stale: &dyn Fn(&Event) -> bool) -> Result<()> {
    for p in run.tb_event_files() {
        let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        let records = read_all(&bytes, &p)?;
        let keep: Vec<&Vec<u8>> = records
            .iter()
            .filter(|r| !Event::decode(r).is_some_and(|e| stale(&e)))
            .collect();
        if keep.len() < records.len() {
            let out: Vec<u8> = keep.iter().flat_map(|r| frame(r)).collect();
            replace_file(&p, &out)?;
        }
    }
    Ok(())
}

impl EventWriter {
    /// Opens a new event file in `<run>/tb/` after dropping the `stale` events of
    /// the files already there.
    pub fn create(run: &RunDir, stale: &dyn Fn(&Event) -> bool) -> Result<Self> {
        let dir = run.tb_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        purge(run, stale)?;
        let unique = format!(
            "{:010}.{}.{}.{}",
            super::state::now(),
            host(),
            std::process::id(),
            OPENED.fetch_add(1, Ordering::Relaxed)
        );
        let path = run.tb_event_file(&unique);
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut w = Self { path, file };
        w.event(0, What::FileVersion("brain.Event:2".into()))?;
        Ok(w)
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn event(&mut self, step: u64, what: What) -> Result<()> {
        let e = Event {
            wall_time: wall_time(),
            step: step as i64,
            what,
        };
        self.file
            .write_all(&frame(&e.encode()))
            .map_err(|err| Error::io(&self.path, err))
    }

    /// A scalar at a step (stored as f32, as TensorBoard stores scalars).
    pub fn scalar(&mut self, step: u64, tag: &str, value: f64) -> Result<()> {
        self.event(
            step,
            What::Scalar {
                tag: tag.into(),
                value: value as f32,
            },
        )
    }

    /// A markdown text at a step.
    pub fn text(&mut self, step: u64, tag: &str, text: &str) -> Result<()> {
        self.event(
            step,
            What::Text {
                tag: tag.into(),
                text: text.into(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalars(run: &RunDir) -> Vec<(String, i64, f32)> {
        let mut out: Vec<_> = read_events(run)
            .unwrap()
            .into_iter()
            .flat_map(|(_, ev)| ev)
            .filter_map(|e| match e.what {
                What::Scalar { tag, value } => Some((tag, e.step, value)),
                _ => None,
            })
            .collect();
        out.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        out
    }

    #[test]
    fn new_file_per_writer_and_stale_events_are_dropped() {
        let d = tempfile::tempdir().unwrap();
        let run = RunDir::new(d.path());
        let mut w = EventWriter::create(&run, &|_| false).unwrap();
        assert!(w
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("events.out.tfevents."));
        for s in 1..=4 {
            w.scalar(s, "train/loss", s as f64).unwrap();
        }
        w.text(0, "hparams/recipe", "x").unwrap();
        drop(w);
        // A resume from step 2: steps 3 and 4 of the first file go.
        let mut w = EventWriter::create(&run, &|e| e.step > 2).unwrap();
        w.scalar(3, "train/loss", 30.0).unwrap();
        drop(w);
        assert_eq!(run.tb_event_files().len(), 2);
        let tag = |s: i64, v: f32| ("train/loss".to_string(), s, v);
        assert_eq!(scalars(&run), vec![tag(1, 1.0), tag(2, 2.0), tag(3, 30.0)]);
        // The text at step 0 and both file-version events survive.
        let all: Vec<Event> = read_events(&run)
            .unwrap()
            .into_iter()
            .flat_map(|(_, e)| e)
            .collect();
        assert_eq!(
            all.iter()
                .filter(|e| e.tag() == Some("hparams/recipe"))
                .count(),
            1
        );
        assert_eq!(all.iter().filter(|e| e.tag().is_none()).count(), 2);
    }
}
