//! `vssl sweep`: run (or plan, or write a Slurm job array for) every point of a sweep.

use std::path::PathBuf;

use anyhow::Context;
use vssl::sweep::local::{self, LocalOptions, Status};

use super::DeviceSpec;

#[derive(clap::Args)]
pub struct Args {
    /// The sweep file (TOML; see README "Sweeps").
    file: PathBuf,
    /// Runs at a time (local executor).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// List the points, their run directories and states; run nothing.
    #[arg(long)]
    dry_run: bool,
    /// local: child processes on this machine; slurm: write an sbatch job-array script.
    #[arg(long, value_enum, default_value_t = Executor::Local)]
    executor: Executor,
    /// With --executor slurm: submit the script with sbatch.
    #[arg(long)]
    submit: bool,
    /// Sweep directory (default weights/sweeps/<name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override a recipe key in every point (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Executor {
    Local,
    Slurm,
}

/// The points run as child `vssl` processes, each given `--device` as written.
pub fn run(a: Args, device: &DeviceSpec) -> anyhow::Result<()> {
    if a.jobs == 0 {
        return Err(vssl::Error::BadInput("--jobs must be at least 1".into()).into());
    }
    let sweep = vssl::sweep::load(&a.file, &a.sets, a.out.as_deref())?;
    if a.dry_run {
        print!("{}", vssl::sweep::plan_table(&sweep));
        return Ok(());
    }
    let exe = std::env::current_exe().context("locating the vssl executable")?;
    match a.executor {
        Executor::Local => {
            let opts = LocalOptions {
                jobs: a.jobs,
                device: device.0.clone(),
                exe,
            };
            let outcomes = local::run(&sweep, &opts)?;
            println!("{}", local::summary(&outcomes));
            let failed = outcomes
                .iter()
                .filter(|o| matches!(o.status, Status::Failed { .. }))
                .count();
            if failed > 0 {
                anyhow::bail!(
                    "{failed} of {} runs failed (the others completed); rerun the sweep to retry them",
                    outcomes.len()
                );
            }
        }
        Executor::Slurm => {
            let cwd = std::env::current_dir().context("current directory")?;
            let job = vssl::sweep::slurm::write(&sweep, &exe, &cwd, &device.0, a.submit)?;
            println!("{}", job.script.display());
            match job.submitted {
                Some(s) => println!("{s}"),
                None => eprintln!(
                    "{} array tasks; submit with: sbatch {}",
                    sweep.points.len(),
                    job.script.display()
                ),
            }
        }
    }
    Ok(())
}
