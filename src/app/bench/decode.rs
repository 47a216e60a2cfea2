//! `vssl bench decode`: vssl's side of the decoder comparison in
//! `tools/bench_decoders.py`. It takes a plan of (file, frames) pairs written by the
//! script (the same frames every peer decodes) and times decoding them as the loader
//! does: clip-only decoding with unused frames skipped for a list of frames, a full
//! decode for an empty list. Every frame is resized to the same shorter side, RGB bytes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::data::decode::{decode_selected, decode_video_limited, scan_video};
use crate::{Error, Result};

/// One file of the plan: the frames to decode (decode order), or all when empty.
#[derive(Debug, Clone, Deserialize)]
pub struct PlanItem {
    pub path: PathBuf,
    #[serde(default)]
    pub frames: Vec<usize>,
}

/// What one pass over the plan gave.
#[derive(Debug, Clone, Serialize)]
pub struct DecodeTiming {
    pub seconds: f64,
    pub files: usize,
    pub frames: usize,
    /// Sum of every delivered byte, so runs (and decoders) can be compared for sanity.
    pub checksum: u64,
}

/// Reads a plan: a JSON list of `{"path": ..., "frames": [...]}`.
pub fn read_plan(path: &Path) -> Result<Vec<PlanItem>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::BadInput(format!("{}: not a decode plan: {e}", path.display())))
}

/// Decodes the plan once with shorter side `short_side` (`None`: the stored size; at
/// reduced resolution where allowed, with `lowres`, as `data.decode_lowres` does).
/// With `dump`, each file's frames are also written there as `<i>.rgb` (raw
/// `[T, H, W, 3]` bytes) with `<i>.json` (`frames`, `height`, `width`), untimed.
pub fn run_plan(
    plan: &[PlanItem],
    short_side: Option<usize>,
    lowres: bool,
    dump: Option<&Path>,
) -> Result<DecodeTiming> {
    let mut seconds = 0.0;
    let (mut frames, mut checksum) = (0usize, 0u64);
    for (i, item) in plan.iter().enumerate() {
        let t = Instant::now();
        let video = if item.frames.is_empty() {
            decode_video_limited(&item.path, short_side, None, lowres)?
        } else {
            let mut wanted = item.frames.clone();
            wanted.sort_unstable();
            wanted.dedup();
            let scan = scan_video(&item.path)?;
            decode_selected(&item.path, short_side, &wanted, &scan, true, lowres)?.video
        };
        seconds += t.elapsed().as_secs_f64();
        if let Some(dir) = dump {
            let raw = dir.join(format!("{i}.rgb"));
            std::fs::write(&raw, &video.data).map_err(|e| Error::io(&raw, e))?;
            let meta = dir.join(format!("{i}.json"));
            let text = serde_json::json!({
                "path": item.path,
                "frames": video.frames,
                "height": video.height,
                "width": video.width,
            });
            std::fs::write(&meta, text.to_string()).map_err(|e| Error::io(&meta, e))?;
        }
        frames += video.frames;
        checksum = video
            .data
            .iter()
            .fold(checksum, |s, &b| s.wrapping_add(b as u64));
        video.recycle();
    }
    Ok(DecodeTiming {
        seconds,
        files: plan.len(),
        frames,
        checksum,
    })
}
