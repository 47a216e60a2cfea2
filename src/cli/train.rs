//! `vssl train`: pretrain a backbone with the recipe's pretext method; prints the run
//! directory.

use std::path::PathBuf;

use vssl::app::train::{self as trainer, TrainOptions};
use vssl::recipe::{self, RecipeSource};

use super::DeviceSpec;

#[derive(clap::Args)]
pub struct Args {
    /// Experiment recipe (TOML).
    recipe: PathBuf,
    /// Override a recipe key: --set train.lr=0.05 (repeatable; wins over env and file).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Run directory (default weights/<recipe name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from the latest checkpoint in the run directory (a directory with no
    /// checkpoint yet starts from step 0). Refused when the recipe changes the run.
    #[arg(long)]
    resume: bool,
    /// With --resume: continue even when the recipe changes the run (architecture,
    /// method, data, batch size, seed, schedule); the changed keys are listed.
    #[arg(long, requires = "resume")]
    force: bool,
    /// Stop after this many steps, as if interrupted (for testing resume).
    #[arg(long, hide = true)]
    stop_after: Option<u64>,
}

pub fn run(a: Args, device: &DeviceSpec) -> anyhow::Result<()> {
    let r = recipe::load(&RecipeSource::with_sets(a.recipe, a.sets))?;
    let dev = device.device_for(r.train.device.as_deref())?;
    let out = a
        .out
        .unwrap_or_else(|| PathBuf::from("weights").join(&r.name));
    let s = trainer::train(
        &r,
        &TrainOptions {
            out,
            resume: a.resume,
            stop_after: a.stop_after,
            force: a.force,
        },
        &dev,
    )?;
    tracing::info!(
        "{} steps of {} in {:.1}s, last loss {:.4}, {} bad videos skipped: {}",
        s.steps_done,
        s.total_steps,
        s.seconds,
        s.last_loss,
        s.bad_videos,
        s.run_dir.display()
    );
    println!("{}", s.run_dir.display());
    Ok(())
}
