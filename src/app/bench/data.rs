//! `vssl bench data`: how fast the data pipeline feeds the trainer, measured on the
//! recipe's own video files in one run: decoded frames/s of vssl's decoder against
//! the ffmpeg command-line tool on the same files (both on one core), and clips/s of
//! the loader decoding on the fly (clip-only and full decodes, 1..N workers) and
//! reading the frame cache, when configured.
//! Each figure is the median of `repeat` runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::median;
use crate::data::cache::CachedDataset;
use crate::data::datasets::VideoDataset;
use crate::data::decode::decode_video;
use crate::data::loader::{BatchPlan, Loader};
use crate::data::Split;
use crate::recipe::Recipe;
use crate::{registry, Error, Result};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Runs per figure (the median is reported).
    pub repeat: usize,
    /// Loader steps per clips/s run.
    pub steps: u64,
    /// Videos of the train split decoded per frames/s run (the first ones).
    pub videos: usize,
    /// Build a raw and a JPEG cache of the dataset (in the scratch directory) and time
    /// the loader reading each.
    pub caches: bool,
}

/// One cache format built and read by the benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct CacheFigure {
    pub format: String,
    /// Size of its frame file.
    pub bytes: u64,
    /// Raw size over this size.
    pub smaller_than_raw: f64,
    /// Loader clips/s reading it (`data.workers` threads).
    pub clips_per_s: f64,
    /// Median over runs of this clips/s over on-the-fly decoding's, back to back.
    pub vs_on_the_fly: f64,
    /// The frames of clips/s fetched alone (no augmentation), one thread.
    pub read_clips_per_s: f64,
    /// Median over runs of that over fetching by decoding on the fly, back to back.
    pub read_vs_on_the_fly: f64,
}

/// The medians, and how they were obtained.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub videos: usize,
    pub frames: usize,
    pub repeat: usize,
    /// vssl decode (resize to `data.short_side` included), one thread.
    pub vssl_frames_per_s: f64,
    /// `ffmpeg -threads 1 ... -pix_fmt rgb24 -f null -` on the same files.
    pub ffmpeg_frames_per_s: f64,
    /// How ffmpeg was run (`concat`: one process over all files; `per-file`).
    pub ffmpeg_mode: String,
    /// Median over runs of (vssl frames/s) / (ffmpeg frames/s), each pair measured
    /// back to back (robust to load changing between runs).
    pub decode_ratio: f64,
    /// Loader clips/s decoding on the fly with `data.workers` threads.
    pub workers: usize,
    pub on_the_fly_clips_per_s: f64,
    /// The same loader decoding every frame of each video (`data.clip_only = false`).
    pub full_decode_clips_per_s: f64,
    /// Median over runs of (on the fly) / (full decode), measured back to back.
    pub clip_only_ratio: f64,
    /// Loader clips/s decoding on the fly with 1..=max(2, `data.workers`) workers.
    pub scaling: Vec<WorkerFigure>,
    /// With `--caches`: a raw and a JPEG cache of the dataset.
    pub caches: Vec<CacheFigure>,
    /// With `--caches`: clips/s whose frames are fetched by decoding on the fly (clip-only
    /// decoding as configured, no augmentation, one thread).
    pub on_the_fly_read_clips_per_s: Option<f64>,
    pub cache_clips_per_s: Option<f64>,
    pub cache_ratio: Option<f64>,
}

/// Loader speed with one worker count.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerFigure {
    pub workers: usize,
    pub clips_per_s: f64,
    /// Median over runs of this count's clips/s over one worker's, measured back to back.
    pub speedup: f64,
}

/// Runs `ffmpeg` with `args`, returns the wall time; a failure is an error naming it.
fn time_ffmpeg(args: &[String]) -> Result<f64> {
    let t = Instant::now();
    let out = Command::new("ffmpeg")
        .args(args)
        .output()
        .map_err(|e| Error::BadInput(format!("cannot run ffmpeg (is it installed?): {e}")))?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(Error::BadInput(format!(
            "ffmpeg {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )));
    }
    Ok(secs)
}

fn ffmpeg_file_args(file: &Path) -> Vec<String> {
    let mut a: Vec<String> = ["-nostdin", "-v", "error", "-threads", "1", "-i"]
        .map(String::from)
        .to_vec();
    a.push(file.display().to_string());
    a.extend(["-pix_fmt", "rgb24", "-f", "null", "-"].map(String::from));
    a
}

/// One ffmpeg process decoding every file in turn (concat demuxer), so process start-up
/// is not counted against ffmpeg; `None` if the files cannot be concatenated.
fn ffmpeg_concat(files: &[PathBuf], list: &Path) -> Result<Option<f64>> {
    let text: String = files
        .iter()
        .map(|f| {
            let abs = std::fs::canonicalize(f).unwrap_or_else(|_| f.clone());
            format!(
                "file '{}'\n",
                abs.display().to_string().replace('\'', "'\\''")
            )
        })
        .collect();
    std::fs::write(list, text).map_err(|e| Error::io(list, e))?;
    let mut a: Vec<String> = [
        "-nostdin", "-v", "error", "-threads", "1", "-f", "concat", "-safe", "0", "-i",
    ]
    .map(String::from)
    .to_vec();
    a.push(list.display().to_string());
    a.extend(["-pix_fmt", "rgb24", "-f", "null", "-"].map(String::from));
    Ok(time_ffmpeg(&a).ok())
}

/// Clips/s of the loader over `steps` steps of the recipe's batch plan.
fn loader_clips_per_s(
    ds: Arc<dyn VideoDataset>,
    plan: &BatchPlan,
    steps: u64,
    workers: usize,
) -> Result<f64> {
    let t = Instant::now();
    let mut clips = 0usize;
    for hb in Loader::spawn(ds, plan.clone(), 0, steps, workers) {
        clips += hb?.shape[0];
    }
    Ok(clips as f64 / t.elapsed().as_secs_f64().max(1e-9))
}

/// The cached dataset of a recipe, when `data.cache` is set and built (a stale cache
/// is an error: benchmarking it would measure the wrong frames).
fn cached_dataset(
    recipe: &Recipe,
    source: &Arc<dyn VideoDataset>,
) -> Result<Option<Arc<dyn VideoDataset>>> {
    let Some(dir) = &recipe.data.cache else {
        return Ok(None);
    };
    match crate::data::cache::check(dir, source.as_ref(), &recipe.data) {
        crate::data::cache::Status::Missing => {
            tracing::warn!(
                "data.cache = {} is not built yet; run `vssl data cache` to bench it",
                dir.display()
            );
            Ok(None)
        }
        _ => Ok(Some(Arc::new(CachedDataset::open(
            dir,
            source.clone(),
            &recipe.data,
        )?))),
    }
}

/// Clips/s of fetching the frames of the recipe's first `steps` batches (what
/// [`VideoDataset::planned_video`] returns), one thread, no augmentation.
fn read_clips_per_s(ds: &dyn VideoDataset, plan: &BatchPlan, steps: u64) -> Result<f64> {
    use rand::SeedableRng;
    let n = ds.len(Split::Train);
    let t = Instant::now();
    let mut clips = 0usize;
    for step in 0..steps {
        for j in 0..plan.batch_size {
            let idx = crate::data::loader::video_for(n, plan, step, j);
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(step ^ (j as u64) << 32);
            let planner = plan.planner.as_ref();
            // An unreadable video counts as no clips, as the loader would skip it.
            if let Ok((v, c)) =
                ds.planned_video(Split::Train, idx, &mut |len| planner.plan(len, &mut rng))
            {
                clips += c.len();
                v.recycle();
            }
        }
    }
    Ok(clips as f64 / t.elapsed().as_secs_f64().max(1e-9))
}

/// A cache built for the benchmark.
struct BuiltCache {
    format: String,
    dir: PathBuf,
    bytes: u64,
    dataset: Arc<dyn VideoDataset>,
}

/// Builds a raw and a JPEG cache of the recipe's dataset under `scratch` (raw first).
fn build_caches(
    recipe: &Recipe,
    source: &Arc<dyn VideoDataset>,
    scratch: &Path,
) -> Result<Vec<BuiltCache>> {
    use crate::data::cache::CacheFormat;
    let mut out = Vec::new();
    for format in [CacheFormat::Raw, CacheFormat::Jpeg] {
        let cfg = crate::data::DataConfig {
            cache_format: format,
            ..recipe.data.clone()
        };
        let name = format!("{format:?}").to_lowercase();
        let dir = scratch.join(format!("vssl-bench-cache-{}-{name}", std::process::id()));
        let summary = crate::app::cache::build(&dir, source.as_ref(), &cfg, &|_, _| {})?;
        let dataset: Arc<dyn VideoDataset> =
            Arc::new(CachedDataset::open(&dir, source.clone(), &cfg)?);
        out.push(BuiltCache {
            format: name,
            dir,
            bytes: summary.bytes,
            dataset,
        });
    }
    Ok(out)
}

/// Benchmarks the recipe's data pipeline; `scratch` holds temporary files.
pub fn bench_data(recipe: &Recipe, opts: &BenchOptions, scratch: &Path) -> Result<BenchReport> {
    let repeat = opts.repeat.max(1);
    // On the fly means straight from the video files, whatever `data.cache` says.
    let ds: Arc<dyn VideoDataset> = Arc::from(crate::data::datasets::build(&recipe.data)?);
    let n = ds.len(Split::Train).min(opts.videos.max(1));
    let files: Vec<PathBuf> = (0..n)
        .filter_map(|i| ds.source_path(Split::Train, i))
        .collect();
    if files.is_empty() {
        return Err(Error::BadInput(format!(
            "bench data needs video files; {} has none (write the synthetic set with \
             `vssl data synth --out DIR` and use data.kind = \"ucf101\")",
            ds.describe()
        )));
    }
    let short = recipe.data.short_side.unwrap_or(recipe.data.size);
    let (mut vssl_fps, mut ff_fps, mut ratios, mut otf) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut frames = 0;
    let mut mode = "concat";
    let list = scratch.join("vssl-bench-concat.txt");
    let device = candle_core::Device::Cpu;
    let plan = BatchPlan {
        planner: registry::pretext(
            &recipe.method,
            &recipe.backbone,
            recipe.data.frames,
            recipe.train.seed,
            &device,
        )?
        .planner(),
        size: recipe.data.size,
        batch_size: recipe.train.batch_size,
        seed: recipe.train.seed,
        augment: recipe.data.augment.clone(),
    };
    let workers = recipe.data.workers.max(1);
    let full_ds: Arc<dyn VideoDataset> =
        Arc::from(crate::data::datasets::build(&crate::data::DataConfig {
            clip_only: false,
            ..recipe.data.clone()
        })?);
    let counts: Vec<usize> = (1..=workers.max(2)).collect();
    let built = if opts.caches {
        build_caches(recipe, &ds, scratch)?
    } else {
        Vec::new()
    };
    let mut cache_runs: Vec<[Vec<f64>; 4]> = vec![Default::default(); built.len()];
    let mut otf_reads = Vec::new();
    let (mut full, mut clip_ratios) = (Vec::new(), Vec::new());
    let mut by_count: Vec<Vec<f64>> = vec![Vec::new(); counts.len()];
    let mut speedups: Vec<Vec<f64>> = vec![Vec::new(); counts.len()];
    // Interleave the measurements so a change in machine load hits all of them.
    for _ in 0..repeat {
        let t = Instant::now();
        frames = 0;
        for f in &files {
            if let Ok(v) = decode_video(f, Some(short)) {
                frames += v.frames;
                v.recycle();
            }
        }
        vssl_fps.push(frames as f64 / t.elapsed().as_secs_f64().max(1e-9));

        let secs = match (mode, ffmpeg_concat(&files, &list)?) {
            ("concat", Some(s)) => s,
            _ => {
                mode = "per-file";
                let mut s = 0.0;
                for f in &files {
                    s += time_ffmpeg(&ffmpeg_file_args(f))?;
                }
                s
            }
        };
        ff_fps.push(frames as f64 / secs.max(1e-9));
        ratios.push(vssl_fps[vssl_fps.len() - 1] / ff_fps[ff_fps.len() - 1]);
        otf.push(loader_clips_per_s(ds.clone(), &plan, opts.steps, workers)?);
        full.push(loader_clips_per_s(
            full_ds.clone(),
            &plan,
            opts.steps,
            workers,
        )?);
        clip_ratios.push(otf[otf.len() - 1] / full[full.len() - 1]);
        for (k, &w) in counts.iter().enumerate() {
            let c = if w == workers {
                otf[otf.len() - 1]
            } else {
                loader_clips_per_s(ds.clone(), &plan, opts.steps, w)?
            };
            by_count[k].push(c);
        }
        for k in 0..counts.len() {
            let one = by_count[0][by_count[0].len() - 1];
            speedups[k].push(by_count[k][by_count[k].len() - 1] / one);
        }
        if !built.is_empty() {
            otf_reads.push(read_clips_per_s(ds.as_ref(), &plan, opts.steps)?);
        }
        for (b, runs) in built.iter().zip(&mut cache_runs) {
            let c = loader_clips_per_s(b.dataset.clone(), &plan, opts.steps, workers)?;
            runs[0].push(c);
            runs[1].push(c / otf[otf.len() - 1]);
            let r = read_clips_per_s(b.dataset.as_ref(), &plan, opts.steps)?;
            runs[2].push(r);
            runs[3].push(r / otf_reads[otf_reads.len() - 1]);
        }
    }
    let raw_bytes = built.first().map_or(0, |b| b.bytes);
    let caches = built
        .iter()
        .zip(&cache_runs)
        .map(|(b, r)| CacheFigure {
            format: b.format.clone(),
            bytes: b.bytes,
            smaller_than_raw: raw_bytes as f64 / b.bytes.max(1) as f64,
            clips_per_s: median(&r[0]),
            vs_on_the_fly: median(&r[1]),
            read_clips_per_s: median(&r[2]),
            read_vs_on_the_fly: median(&r[3]),
        })
        .collect();
    for b in &built {
        let _ = std::fs::remove_dir_all(&b.dir);
    }
    let _ = std::fs::remove_file(&list);
    let (vssl_frames_per_s, ffmpeg_frames_per_s) = (median(&vssl_fps), median(&ff_fps));
    let on_the_fly = median(&otf);
    let cache = match cached_dataset(recipe, &ds)? {
        Some(c) => {
            let mut v = Vec::new();
            for _ in 0..repeat {
                v.push(loader_clips_per_s(c.clone(), &plan, opts.steps, workers)?);
            }
            Some(median(&v))
        }
        None => None,
    };
    Ok(BenchReport {
        videos: files.len(),
        frames,
        repeat,
        vssl_frames_per_s,
        ffmpeg_frames_per_s,
        ffmpeg_mode: mode.into(),
        decode_ratio: median(&ratios),
        workers,
        on_the_fly_clips_per_s: on_the_fly,
        full_decode_clips_per_s: median(&full),
        clip_only_ratio: median(&clip_ratios),
        caches,
        on_the_fly_read_clips_per_s: (!otf_reads.is_empty()).then(|| median(&otf_reads)),
        scaling: counts
            .iter()
            .enumerate()
            .map(|(k, &w)| WorkerFigure {
                workers: w,
                clips_per_s: median(&by_count[k]),
                speedup: median(&speedups[k]),
            })
            .collect(),
        cache_clips_per_s: cache,
        cache_ratio: cache.map(|c| c / on_the_fly),
    })
}

impl BenchReport {
    /// The human-readable report `vssl bench data` prints (before its JSON line);
    /// `short_side` is the decode resize the recipe asked for.
    pub fn render(&self, short_side: usize) -> String {
        let mut s = format!(
            "decode: {} videos, {} frames, medians of {} runs\n",
            self.videos, self.frames, self.repeat
        );
        s += &format!(
            "  vssl   {:10.1} frames/s (1 thread, shorter side {short_side})\n",
            self.vssl_frames_per_s
        );
        s += &format!(
            "  ffmpeg {:10.1} frames/s (-threads 1, -pix_fmt rgb24 -f null, {})\n",
            self.ffmpeg_frames_per_s, self.ffmpeg_mode
        );
        s += &format!("  ratio vssl/ffmpeg {:.2}x\n", self.decode_ratio);
        s += &format!(
            "loader on the fly: {:.1} clips/s ({} workers)\n",
            self.on_the_fly_clips_per_s, self.workers
        );
        s += &format!(
            "loader decoding every frame (data.clip_only = false): {:.1} clips/s, ratio on-the-fly/full {:.2}x\n",
            self.full_decode_clips_per_s, self.clip_only_ratio
        );
        for f in &self.scaling {
            s += &format!(
                "loader with {} worker(s): {:.1} clips/s, {:.2}x one worker\n",
                f.workers, f.clips_per_s, f.speedup
            );
        }
        match (self.cache_clips_per_s, self.cache_ratio) {
            (Some(c), Some(x)) => {
                s += &format!("loader from cache: {c:.1} clips/s, ratio {x:.1}x on-the-fly\n")
            }
            _ => s += "loader from cache: not measured (data.cache unset or not built)\n",
        }
        if let Some(r) = self.on_the_fly_read_clips_per_s {
            s += &format!("fetching clip frames by decoding (1 thread): {r:.1} clips/s\n");
        }
        for c in &self.caches {
            s += &format!(
                "{} cache: {:.1} MB ({:.1}x smaller than raw); loader {:.1} clips/s, {:.2}x on the fly; \
                 fetching (1 thread) {:.1} clips/s, {:.2}x decoding\n",
                c.format,
                c.bytes as f64 / 1e6,
                c.smaller_than_raw,
                c.clips_per_s,
                c.vs_on_the_fly,
                c.read_clips_per_s,
                c.read_vs_on_the_fly
            );
        }
        s
    }
}
