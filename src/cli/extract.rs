//! `vssl extract`: pooled backbone features of videos or clips, written as
//! safetensors; prints the output path.

use std::path::PathBuf;

use vssl::app::extract::{self, ExtractOptions};

use super::{BackboneOpts, DeviceSpec};

#[derive(clap::Args)]
pub struct Args {
    /// Weights (vssl import output or a run's model.safetensors).
    #[arg(long)]
    weights: PathBuf,
    /// Video file, directory of videos (sorted by name; unreadable ones skipped),
    /// or .safetensors holding `clips`.
    #[arg(long)]
    input: PathBuf,
    /// The safetensors file to write.
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    backbone: BackboneOpts,
    /// Frames per clip (videos).
    #[arg(long, default_value_t = 16)]
    frames: usize,
    /// Shorter side after decoding and square centre-crop size (videos).
    #[arg(long, default_value_t = 112)]
    size: usize,
    /// Uniformly spaced clips per video, features averaged (videos).
    #[arg(long, default_value_t = 1)]
    clips: usize,
    /// Temporal stride between a clip's frames (videos).
    #[arg(long, default_value_t = 1)]
    stride: usize,
    /// Clips per forward pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,
}

pub fn run(a: Args, device: &DeviceSpec) -> anyhow::Result<()> {
    let dev = device.device()?;
    let opts = ExtractOptions {
        weights: a.weights,
        input: a.input,
        output: a.output,
        backbone: a.backbone.into(),
        frames: a.frames,
        size: a.size,
        clips: a.clips,
        stride: a.stride,
        batch: a.batch,
    };
    let s = extract::extract(&opts, &dev)?;
    tracing::info!(
        "{} feature rows of {} channels ({} inputs skipped)",
        s.rows,
        s.channels,
        s.skipped.len()
    );
    println!("{}", opts.output.display());
    Ok(())
}
