//! `vssl train`: a recipe resolved through the registry, then [`fit`].

use std::path::PathBuf;

use candle_core::Device;

use crate::recipe::Recipe;
use crate::run_dir::RunDir;
use crate::train::{fit, FitOptions, LoaderConfig, TrainSummary};
use crate::{registry, Result};

/// How to run the trainer.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Run directory (`weights/<run>` by default).
    pub out: PathBuf,
    /// Continue from the latest checkpoint in `out`.
    pub resume: bool,
    /// Stop after this many steps (as if interrupted): used to test resume.
    pub stop_after: Option<u64>,
    /// Resume even when the recipe changes the run.
    pub force: bool,
    /// This process is one rank of a data-parallel run: rank 0 takes the run's lock
    /// and writes the run directory.
    pub parallel: Option<crate::train::parallel::Parallel>,
}

/// Trains the recipe's method into `opts.out`.
pub fn train(recipe: &Recipe, opts: &TrainOptions, device: &Device) -> Result<TrainSummary> {
    let run = RunDir::new(&opts.out);
    // Before the lock, which creates the directory.
    crate::train::trainer::check_resume_dir(&run, opts.resume)?;
    let lead = crate::train::parallel::is_lead(opts.parallel.as_ref());
    let _lock = match lead {
        true => Some(crate::lock::RunLock::acquire(run.path(), "vssl train")?),
        false => None,
    };
    let dataset = registry::dataset(&recipe.data)?;
    let mut pretext = registry::pretext(
        &recipe.method,
        &recipe.backbone,
        recipe.data.frames,
        recipe.train.seed,
        device,
    )?;
    let fit_opts = FitOptions {
        parallel: opts.parallel.clone(),
        loader: LoaderConfig::from(&recipe.data),
        resume: opts.resume,
        stop_after: opts.stop_after,
        recipe: Some(recipe.to_toml()),
        name: format!("{} ({:?})", recipe.name, recipe.method.kind()),
        force: opts.force,
    };
    fit(
        pretext.as_mut(),
        dataset,
        &recipe.train,
        &fit_opts,
        &run,
        device,
    )
}
