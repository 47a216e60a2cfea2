//! Feature extraction (`vssl extract`): pooled backbone features of videos or of
//! ready-made clips, written as a safetensors file.
//!
//! Inputs:
//! - a safetensors file (`.safetensors`) holding `clips` `[N, 3, T, H, W]`, already
//!   normalised: one feature row per clip;
//! - a video file (feature `video`): one row, the mean of the features of `clips`
//!   uniformly spaced, centre-cropped clips of `frames` frames at `stride`, decoded with
//!   the shorter side resized to `size` and normalised like training clips
//!   ([`crate::data::loader::eval_clips`]);
//! - a directory: every video file in it (sorted by file name; sub-directories and
//!   hidden files ignored), one row each. A file that cannot be decoded is skipped with
//!   a warning and listed in the output's `skipped` metadata.
//!
//! The output holds `features` `[N, C]` (f32): the backbone's globally average-pooled
//! feature map, before any classifier, in inference mode (batch-norm running
//! statistics). Metadata: `names` (JSON list naming each row: file names for a
//! directory, the path for one video, `<file>[i]` for clips), `skipped` (JSON list),
//! `arch`, `weights` (the weights path) and the clip geometry.
//!
//! Weights: any vssl weights file (`vssl import`, `vssl train`'s `model.safetensors`,
//! `vssl export`'s), as a path, an `hf://` id or a registry name.
//! The architecture comes from the file's metadata when it has it, overridden by
//! `--recipe`, `--arch` and `--set` ([`super::import::BackboneArgs`]). `pretext.*` keys
//! and the classifier (`fc.*`, C3D: `linear.*`) are ignored; any backbone tensor the
//! file lacks is an error, as is a shape mismatch (naming the tensor).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::import::{resolve_backbone, spec_from_metadata, BackboneArgs, BackboneSpec};
use crate::backbone::arch::{arch_name, classifier_prefix};
use crate::backbone::{Arch, Backbone};
use crate::data::Video;
use crate::io::{read_safetensors, write_safetensors_atomic};
use crate::{Error, Result};

/// What `vssl extract` does.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    pub weights: PathBuf,
    /// A video, a directory of videos, or a `.safetensors` file holding `clips`.
    pub input: PathBuf,
    pub output: PathBuf,
    pub backbone: BackboneArgs,
    /// Frames per clip (videos only).
    pub frames: usize,
    /// Spatial size: shorter side after decoding and square centre crop (videos only).
    pub size: usize,
    /// Clips per video, averaged (videos only).
    pub clips: usize,
    /// Temporal stride between a clip's frames (videos only).
    pub stride: usize,
    /// Clips per forward pass.
    pub batch: usize,
}

/// What an extraction produced.
#[derive(Debug, Clone)]
pub struct ExtractSummary {
    /// Rows written (`features` is `[rows, channels]`).
    pub rows: usize,
    pub channels: usize,
    pub names: Vec<String>,
    /// Inputs that could not be read (directory mode), with the reason.
    pub skipped: Vec<(String, String)>,
    pub spec: BackboneSpec,
}

/// Builds the backbone for a weights file and loads it (see the module docs for
/// how the architecture is found). `default_frames` is the clip length the backbone is
/// built for when neither the file nor `args` give one (it only matters for TGN).
pub fn load_backbone(
    weights: &Path,
    args: &BackboneArgs,
    default_frames: usize,
    device: &Device,
) -> Result<(Box<dyn Backbone>, BackboneSpec)> {
    let resolved = crate::hub::resolve_path(weights, &crate::hub::HubEnv::from_env())?;
    let weights = resolved.path.as_path();
    let (tensors, meta) = read_safetensors(weights, device)?;
    let base = spec_from_metadata(weights, &meta)?;
    let arch_set = args.sets.iter().any(|kv| {
        let k = kv.split('=').next().unwrap_or("").trim();
        k == "arch" || k == "backbone.arch"
    });
    if base.is_none() && args.arch.is_none() && args.recipe.is_none() && !arch_set {
        return Err(Error::checkpoint(
            weights,
            "the metadata does not name the backbone architecture: pass --arch (or --recipe)",
        ));
    }
    let mut spec = resolve_backbone(args, base, default_frames)?;
    spec.cfg.num_classes = None;
    let net = spec.build(device)?;
    let classifier = format!("{}.", classifier_prefix(spec.cfg.arch));
    let own: BTreeMap<String, Tensor> = tensors
        .into_iter()
        .filter(|(k, _)| !k.starts_with("pretext.") && !k.starts_with(&classifier))
        .collect();
    let report = net
        .vars()
        .load(&own)
        .map_err(|e| Error::checkpoint(weights, e.to_string()))?;
    if !report.missing.is_empty() {
        let n = report.missing.len();
        let shown: Vec<&str> = report.missing.iter().take(8).map(String::as_str).collect();
        return Err(Error::checkpoint(
            weights,
            format!(
                "{n} backbone tensors of {} missing: {}{}",
                arch_name(spec.cfg.arch),
                shown.join(", "),
                if n > 8 { ", ..." } else { "" }
            ),
        ));
    }
    if !report.unused.is_empty() {
        tracing::warn!(
            "{}: ignoring {} tensors the backbone does not use: {}",
            weights.display(),
            report.unused.len(),
            report.unused.join(", ")
        );
    }
    Ok((net, spec))
}

/// The smallest clip a backbone accepts: C3D's four max-pools need 8 frames and 16
/// pixels; the ResNets take anything.
fn check_geometry(arch: Arch, t: usize, h: usize, w: usize, what: &str) -> Result<()> {
    if t == 0 || h == 0 || w == 0 {
        return Err(Error::BadInput(format!("{what}: empty clip ({t}x{h}x{w})")));
    }
    if arch == Arch::C3d && (t < 8 || h < 16 || w < 16) {
        return Err(Error::BadInput(format!(
            "{what}: c3d needs clips of at least 8 frames and 16x16 pixels, got {t} frames of {h}x{w}"
        )));
    }
    Ok(())
}

/// Pooled features `[N, C]` of clips `[N, 3, T, H, W]`, `batch` clips per forward pass.
pub fn clip_features(net: &dyn Backbone, clips: &Tensor, batch: usize) -> Result<Tensor> {
    let n = clips.dim(0)?;
    let batch = batch.max(1);
    let mut rows = Vec::with_capacity(n.div_ceil(batch));
    for start in (0..n).step_by(batch) {
        let len = batch.min(n - start);
        let x = clips.narrow(0, start, len)?;
        rows.push(net.pooled(&x, false)?.to_dtype(DType::F32)?);
    }
    Ok(Tensor::cat(&rows, 0)?)
}

/// One feature vector `[C]` of a video: the mean over `clips` uniformly spaced,
/// centre-cropped clips of `frames` frames at `stride` and `size` pixels.
pub fn video_features(
    net: &dyn Backbone,
    video: &Video,
    opts: &ExtractOptions,
    device: &Device,
) -> Result<Tensor> {
    if video.frames == 0 || video.height < opts.size || video.width < opts.size {
        return Err(Error::BadInput(format!(
            "video of {} frames of {}x{} is smaller than a {}x{} crop",
            video.frames, video.height, video.width, opts.size, opts.size
        )));
    }
    let (t, s) = (opts.frames, opts.size);
    let data = crate::data::loader::eval_clips(
        video,
        t,
        opts.stride,
        opts.clips,
        s,
        &crate::data::augment::Normalize::KINETICS,
    );
    let x = Tensor::from_vec(data, (opts.clips, 3, t, s, s), device)?;
    Ok(clip_features(net, &x, opts.batch)?.mean(0)?)
}

fn check_options(o: &ExtractOptions) -> Result<()> {
    for (name, v) in [
        ("--frames", o.frames),
        ("--size", o.size),
        ("--clips", o.clips),
        ("--stride", o.stride),
        ("--batch", o.batch),
    ] {
        if v == 0 {
            return Err(Error::BadInput(format!("{name} must be at least 1")));
        }
    }
    Ok(())
}

fn is_safetensors(p: &Path) -> bool {
    p.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}

/// Runs an extraction (see the module docs) and writes `opts.output` atomically.
pub fn extract(opts: &ExtractOptions, device: &Device) -> Result<ExtractSummary> {
    check_options(opts)?;
    let input = &opts.input;
    if !input.exists() {
        return Err(Error::BadInput(format!(
            "{}: no such file or directory",
            input.display()
        )));
    }
    let (net, spec) = load_backbone(&opts.weights, &opts.backbone, opts.frames, device)?;
    let arch = spec.cfg.arch;
    let mut meta = HashMap::new();
    let mut skipped: Vec<(String, String)> = Vec::new();
    let (features, names) = if input.is_file() && is_safetensors(input) {
        let (mut tensors, _) = read_safetensors(input, device)?;
        let clips = tensors.remove("clips").ok_or_else(|| {
            Error::checkpoint(input, "no tensor `clips` (expected [N, 3, T, H, W])")
        })?;
        let d = clips.dims().to_vec();
        if d.len() != 5 || d[1] != 3 || d[0] == 0 {
            return Err(Error::checkpoint(
                input,
                format!("tensor `clips` has shape {d:?}, expected [N, 3, T, H, W] with N >= 1"),
            ));
        }
        if !clips.dtype().is_float() {
            return Err(Error::checkpoint(
                input,
                format!(
                    "tensor `clips` is {:?}, expected floating point",
                    clips.dtype()
                ),
            ));
        }
        check_geometry(arch, d[2], d[3], d[4], &input.display().to_string())?;
        let clips = clips.to_dtype(DType::F32)?;
        let stem = input
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let names = (0..d[0]).map(|i| format!("{stem}[{i}]")).collect();
        meta.insert("input".to_string(), "clips".to_string());
        (clip_features(net.as_ref(), &clips, opts.batch)?, names)
    } else {
        check_geometry(arch, opts.frames, opts.size, opts.size, "--frames/--size")?;
        for (k, v) in [
            ("frames", opts.frames),
            ("size", opts.size),
            ("clips", opts.clips),
            ("stride", opts.stride),
        ] {
            meta.insert(k.to_string(), v.to_string());
        }
        let videos: Vec<(String, PathBuf)> = if input.is_dir() {
            meta.insert("input".to_string(), "directory".to_string());
            list_dir(input)?
        } else {
            meta.insert("input".to_string(), "video".to_string());
            vec![(input.display().to_string(), input.clone())]
        };
        let mut rows = Vec::new();
        let mut names = Vec::new();
        let single = !input.is_dir();
        for (name, path) in videos {
            let row = decode(&path, opts.size)
                .and_then(|v| video_features(net.as_ref(), &v, opts, device));
            match row {
                Ok(r) => {
                    rows.push(r);
                    names.push(name);
                }
                Err(e) if single => return Err(e),
                Err(e) if e.is_bad_input() => {
                    tracing::warn!("skipping {}: {e}", path.display());
                    skipped.push((name, e.to_string()));
                }
                Err(e) => return Err(e),
            }
        }
        if rows.is_empty() {
            return Err(Error::BadInput(format!(
                "{}: no readable video ({} skipped)",
                input.display(),
                skipped.len()
            )));
        }
        (Tensor::stack(&rows, 0)?, names)
    };
    let (rows, channels) = features.dims2()?;
    let json = |v: &[String]| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
    meta.insert("names".into(), json(&names));
    let skipped_names: Vec<String> = skipped.iter().map(|(n, _)| n.clone()).collect();
    meta.insert("skipped".into(), json(&skipped_names));
    meta.insert("arch".into(), arch_name(arch));
    meta.insert("weights".into(), opts.weights.display().to_string());
    meta.insert("format".into(), "pt".into());
    write_safetensors_atomic(&opts.output, &[("features".to_string(), features)], &meta)?;
    Ok(ExtractSummary {
        rows,
        channels,
        names,
        skipped,
        spec,
    })
}

/// The files of a directory to treat as videos: regular files, not hidden, sorted by
/// name. Returns (file name, path) pairs.
fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with('.') || !path.is_file() {
            continue;
        }
        out.push((name, path));
    }
    out.sort();
    Ok(out)
}

#[cfg(feature = "video")]
fn decode(path: &Path, size: usize) -> Result<Video> {
    crate::data::decode::decode_video(path, Some(size))
}

#[cfg(not(feature = "video"))]
fn decode(path: &Path, _size: usize) -> Result<Video> {
    Err(Error::Video {
        path: path.to_path_buf(),
        message: "decoding video files needs the `video` feature (ffmpeg)".into(),
    })
}
