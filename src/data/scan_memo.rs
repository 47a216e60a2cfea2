//! One demux scan per video file, kept for the run. Clip-only decoding plans a
//! video's clips on its packet scan ([`scan_video`]), which reads every packet of the
//! file (about 0.5 ms for a UCF101-sized XviD AVI, 1.2 ms for a 300-frame 640x360
//! H.264 MP4). The scan depends only on the file, so the loader's workers share one
//! per file across epochs instead of reading the file twice per draw. A file whose
//! size or modification time changed is scanned again; the memo stops taking new
//! scans at its byte budget (its per-packet tables, about 8 bytes a frame), so a
//! Kinetics-sized list keeps the first videos drawn and scans the rest each time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::data::decode::{scan_video, StreamScan};
use crate::Result;

/// The default budget: every scan of UCF101 (about 25 MB) or HMDB51, and about a
/// tenth of Kinetics-400's.
pub const DEFAULT_BUDGET: usize = 64 << 20;

/// Scans of video files, shared by the threads of one run.
pub struct ScanMemo {
    budget: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    scans: HashMap<PathBuf, Memoised>,
    bytes: usize,
}

struct Memoised {
    /// The file's size and modification time when it was scanned.
    stamp: (u64, Option<SystemTime>),
    scan: Arc<StreamScan>,
    /// What it counts against the budget.
    bytes: usize,
}

impl ScanMemo {
    /// An empty memo holding at most `budget` bytes of scan tables.
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            inner: Mutex::default(),
        }
    }

    /// The scan of `path`: memoised when the file is unchanged since, else read (and
    /// kept while the budget allows). Errors are those of [`scan_video`], never kept.
    pub fn scan(&self, path: &Path) -> Result<Arc<StreamScan>> {
        let Ok(meta) = std::fs::metadata(path) else {
            return scan_video(path).map(Arc::new);
        };
        let stamp = (meta.len(), meta.modified().ok());
        if let Some(m) = self.lock().scans.get(path) {
            if m.stamp == stamp {
                return Ok(m.scan.clone());
            }
        }
        // Scanned outside the lock: workers scanning other files do not wait.
        let scan = Arc::new(scan_video(path)?);
        let bytes = scan.heap_bytes() + std::mem::size_of::<StreamScan>();
        let mut inner = self.lock();
        if let Some(old) = inner.scans.remove(path) {
            inner.bytes -= old.bytes;
        }
        if inner.bytes + bytes <= self.budget {
            inner.bytes += bytes;
            let memo = Memoised {
                stamp,
                scan: scan.clone(),
                bytes,
            };
            inner.scans.insert(path.to_path_buf(), memo);
        }
        Ok(scan)
    }

    /// Files memoised, and the bytes their tables take.
    pub fn held(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.scans.len(), inner.bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A worker that panicked mid-insert leaves a consistent map (insert is last).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for ScanMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (files, bytes) = self.held();
        f.debug_struct("ScanMemo")
            .field("files", &files)
            .field("bytes", &bytes)
            .field("budget", &self.budget)
            .finish()
    }
}
