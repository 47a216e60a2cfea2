//! `vssl data`: dataset utilities (`synth`, `cache`).

use std::path::PathBuf;

use clap::Subcommand;
use vssl::recipe::{self, RecipeSource};

use super::DeviceSpec;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write the built-in synthetic dataset as video files in UCF101's layout.
    Synth {
        #[arg(long)]
        out: PathBuf,
        /// Take generator settings from this recipe's [data.synthetic] (default: built-in defaults).
        #[arg(long)]
        recipe: Option<PathBuf>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        #[arg(long, default_value_t = 25)]
        fps: u32,
    },
    /// Decode every video of the recipe's dataset once into its frame cache
    /// (`data.cache`, and `eval.data.cache` if set); skipped when already up to date.
    Cache {
        recipe: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Rebuild even if the cache is up to date.
        #[arg(long)]
        force: bool,
    },
}

/// Both run on the CPU.
pub fn run(a: Args, _: &DeviceSpec) -> anyhow::Result<()> {
    match a.cmd {
        Cmd::Synth {
            out,
            recipe,
            sets,
            fps,
        } => synth(out, recipe, sets, fps),
        Cmd::Cache {
            recipe,
            sets,
            force,
        } => {
            let r = recipe::load(&RecipeSource::with_sets(recipe, sets))?;
            vssl::app::cache::refresh_recipe(&r, force, &mut |dir| println!("{}", dir.display()))?;
            Ok(())
        }
    }
}

#[cfg(feature = "video")]
fn synth(out: PathBuf, recipe: Option<PathBuf>, sets: Vec<String>, fps: u32) -> anyhow::Result<()> {
    let cfg = match recipe {
        Some(file) => {
            recipe::load(&RecipeSource::with_sets(file, sets))?
                .data
                .synthetic
        }
        None => vssl::data::synthetic::SyntheticConfig::default(),
    };
    let synth = vssl::data::synthetic::Synthetic::new(cfg)?;
    let summary = vssl::data::encode::write_ucf101_layout(&synth, &out, fps)?;
    tracing::info!(
        "wrote {} videos of {} classes to {}",
        summary.videos,
        summary.classes,
        out.display()
    );
    println!("{}", out.display());
    Ok(())
}

#[cfg(not(feature = "video"))]
fn synth(_: PathBuf, _: Option<PathBuf>, _: Vec<String>, _: u32) -> anyhow::Result<()> {
    Err(vssl::Error::BadInput("`vssl data synth` needs the `video` feature (ffmpeg)".into()).into())
}
