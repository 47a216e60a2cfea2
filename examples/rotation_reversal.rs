//! A pretext method defined outside the crate, through a family trait only.
//!
//! `RotationReversal` is a geometric variant: each clip is rotated by k * 90 degrees
//! and possibly played backwards, and the network names which of the 8 transforms it
//! saw. It implements [`GeometricPretext`] (the two things that vary in that family:
//! how many transforms, and how transform k is applied); vssl's generic
//! [`GeometricMethod`] adapter does the rest (clip planning, labels, head, dropout), and
//! [`vssl::train::fit`] trains it with checkpoints and exact resume. Nothing under
//! `src/` knows about it.
//!
//! ```sh
//! cargo run --release --example rotation_reversal -- examples/rotation_reversal.toml --out weights/rotrev
//! cargo run --release -- eval weights/rotrev --protocol linear,knn
//! ```

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use clap::Parser;
use vssl::pretext::geometric::flip;
use vssl::pretext::{GeometricConfig, GeometricMethod, GeometricPretext, Rotation3d};
use vssl::recipe::{self, MethodConfig, Recipe, RecipeSource};
use vssl::run_dir::RunDir;
use vssl::train::{fit, FitOptions, LoaderConfig, TrainSummary};
use vssl::{nn::VarStore, registry, seed, Error, Result};

/// Rotation prediction with time reversal: transform `k` rotates every frame by
/// `(k % 4) * 90` degrees and, for `k >= 4`, reverses the frame order.
pub struct RotationReversal;

impl GeometricPretext for RotationReversal {
    fn classes(&self) -> usize {
        8
    }

    fn apply(&self, k: usize, clips: &Tensor) -> Result<Tensor> {
        let rotated = Rotation3d.apply(k % 4, clips)?;
        if k >= 4 {
            flip(&rotated, 2) // [N, C, T, H, W]: dim 2 is time
        } else {
            Ok(rotated)
        }
    }
}

/// Command line of the example.
#[derive(Parser, Debug, Clone)]
pub struct Args {
    /// Recipe with `[method] kind = "external"`; the method's settings are a
    /// geometric config under `[method.settings]`.
    pub recipe: PathBuf,
    /// Run directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Override a recipe key (repeatable), as `vssl train --set`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Continue from the latest checkpoint in the run directory.
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many steps, as if interrupted.
    #[arg(long)]
    pub stop_after: Option<u64>,
}

/// The method's own settings from the recipe's `[method.settings]`.
fn settings(r: &Recipe) -> Result<GeometricConfig> {
    let MethodConfig::External(ext) = &r.method else {
        return Err(Error::BadInput(format!(
            "this example trains `[method] kind = \"external\"` recipes, got {:?}",
            r.method.kind()
        )));
    };
    let cfg: GeometricConfig = toml::Value::Table(ext.settings.clone())
        .try_into()
        .map_err(|e| Error::BadInput(format!("[method.settings]: {e}")))?;
    cfg.validate()
        .map_err(|(key, msg)| Error::BadInput(format!("method.settings.{key}: {msg}")))?;
    Ok(cfg)
}

/// Builds the method from public parts and trains it.
pub fn run(a: &Args, device: &Device) -> Result<TrainSummary> {
    let r = recipe::load(&RecipeSource::with_sets(a.recipe.clone(), a.sets.clone()))?;
    let cfg = settings(&r)?;
    let (frames, run_seed) = (r.data.frames, r.train.seed);
    let backbone = registry::backbone(&r.backbone, frames, run_seed, device)?;
    let heads = VarStore::new(device, seed::mix(run_seed ^ seed::hash_str("heads")));
    let mut method = GeometricMethod::new(RotationReversal, &cfg, frames, backbone, heads)?;
    let opts = FitOptions {
        parallel: None,
        loader: LoaderConfig::from(&r.data),
        resume: a.resume,
        stop_after: a.stop_after,
        recipe: Some(r.to_toml()),
        name: format!("{} (rotation_reversal, outside vssl)", r.name),
        force: false,
    };
    let dataset = registry::dataset(&r.data)?;
    fit(
        &mut method,
        dataset,
        &r.train,
        &opts,
        &RunDir::new(&a.out),
        device,
    )
}

#[allow(dead_code)] // the integration test includes this file for `run` only
fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(&args, &Device::Cpu) {
        Ok(s) => {
            println!("{}", s.run_dir.display());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(if e.is_bad_input() { 2 } else { 1 })
        }
    }
}
