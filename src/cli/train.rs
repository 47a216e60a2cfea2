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
    /// Data-parallel training in N processes, each on an equal share of every batch
    /// (train.batch_size must split evenly; train.sync_bn shares batch-norm
    /// statistics); on GPUs one per device. `slurm`: this process is one task of
    /// `srun` (rank from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID).
    #[arg(long, value_name = "N|slurm")]
    ranks: Option<String>,
    /// `--ranks N` on N GPUs: rank r on cuda:r; refused where there is no CUDA.
    #[arg(long, value_name = "N", conflicts_with = "ranks")]
    gpus: Option<usize>,
}

pub fn run(a: Args, device: &DeviceSpec) -> anyhow::Result<()> {
    let r = recipe::load(&RecipeSource::with_sets(a.recipe, a.sets))?;
    if let Some(n) = a.gpus {
        let why = if device.0 == "cpu" {
            Some("--device cpu".to_string())
        } else if !candle_core::utils::cuda_is_available() {
            Some(
                super::cuda_launch::cuda_unavailable()
                    .unwrap_or("this build has no CUDA support")
                    .to_string(),
            )
        } else {
            None
        };
        if let Some(why) = why {
            return Err(vssl::Error::BadInput(format!(
                "--gpus {n}: {why}; --ranks {n} trains with {n} processes on the CPU"
            ))
            .into());
        }
    }
    let ranks = a.gpus.map(|n| n.to_string()).or(a.ranks);
    let me = match (super::ranks::from_launcher()?, ranks.as_deref()) {
        (Some(me), _) => Some(me),
        (None, Some("slurm")) => super::ranks::from_slurm()?,
        (None, Some(n)) => {
            let n: usize = n.parse().ok().filter(|&n| n >= 1).ok_or_else(|| {
                vssl::Error::BadInput(format!("--ranks {n}: expected a number >= 1 or `slurm`"))
            })?;
            if n > 1 {
                return super::ranks::launch(n);
            }
            None
        }
        (None, None) => None,
    };
    let mut dev = device.device_for(r.train.device.as_deref())?;
    let out = a
        .out
        .unwrap_or_else(|| PathBuf::from("weights").join(&r.name));
    let run_dir = vssl::run_dir::RunDir::new(&out);
    vssl::train::trainer::check_resume_dir(&run_dir, a.resume)?;
    let parallel = match &me {
        Some(me) if me.world > 1 => {
            if a.gpus.is_some() && !dev.is_cuda() {
                return Err(vssl::Error::BadInput(format!(
                    "--gpus: rank {} found no CUDA device (--device resolved to the CPU)",
                    me.rank
                ))
                .into());
            }
            if dev.is_cuda() {
                dev = candle_core::Device::new_cuda(me.local).map_err(|e| {
                    vssl::Error::BadInput(format!("rank {}: cuda:{}: {e}", me.rank, me.local))
                })?;
            }
            Some(super::ranks::join(me, &run_dir, r.train.sync_bn, &dev)?)
        }
        _ => None,
    };
    let lead = vssl::train::parallel::is_lead(parallel.as_ref());
    let s = trainer::train(
        &r,
        &TrainOptions {
            out,
            resume: a.resume,
            stop_after: a.stop_after,
            force: a.force,
            parallel,
        },
        &dev,
    )?;
    if !lead {
        return Ok(());
    }
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
