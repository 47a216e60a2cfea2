//! The `vssl` command line: parse, call the library, map errors to exit codes
//! (0 ok, 2 bad input, 1 internal error). Logs go to stderr; results to stdout.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use candle_core::Device;
use clap::{Parser, Subcommand};

use vssl::eval::{EvalTarget, Protocol};
use vssl::recipe::{self, RecipeSource};
use vssl::train::trainer::{self, TrainOptions};

#[derive(Parser)]
#[command(
    name = "vssl",
    version,
    about = "Self-supervised video representation learning on candle"
)]
struct Cli {
    /// Device: auto (CUDA if built with it and present, else CPU), cpu, or cuda[:N].
    #[arg(long, global = true, default_value = "auto")]
    device: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Pretrain a backbone with the recipe's pretext method.
    Train {
        /// Experiment recipe (TOML).
        recipe: PathBuf,
        /// Override a recipe key: --set train.lr=0.05 (repeatable; wins over env and file).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Run directory (default weights/<recipe name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue from the latest checkpoint in the run directory.
        #[arg(long)]
        resume: bool,
        /// Stop after this many steps, as if interrupted (for testing resume).
        #[arg(long, hide = true)]
        stop_after: Option<u64>,
    },
    /// Print the fully resolved recipe (TOML).
    Recipe {
        recipe: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Evaluate a run's backbone downstream; prints one JSON line per protocol.
    Eval {
        /// Run directory (or a model.safetensors inside one).
        run: PathBuf,
        /// linear, knn, or a comma list (features are extracted once).
        #[arg(long, default_value = "linear")]
        protocol: String,
        /// Evaluate the same architecture untrained (the scratch baseline).
        #[arg(long)]
        random_init: bool,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Dataset utilities.
    Data {
        #[command(subcommand)]
        cmd: DataCmd,
    },
}

#[derive(Subcommand)]
enum DataCmd {
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
}

fn device(spec: &str) -> anyhow::Result<Device> {
    Ok(match spec {
        "cpu" => Device::Cpu,
        "auto" => Device::cuda_if_available(0)?,
        s if s.starts_with("cuda") => {
            let n = s
                .strip_prefix("cuda:")
                .map(str::parse)
                .transpose()
                .context("--device cuda:N")?
                .unwrap_or(0);
            Device::new_cuda(n).map_err(|e| vssl::Error::BadInput(format!("--device {s}: {e}")))?
        }
        other => {
            return Err(vssl::Error::BadInput(format!(
                "--device {other}: expected auto, cpu or cuda[:N]"
            ))
            .into())
        }
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Recipe { recipe, sets } => {
            let r = recipe::load(&RecipeSource::with_sets(recipe, sets))?;
            print!("{}", r.to_toml());
        }
        Cmd::Train {
            recipe,
            sets,
            out,
            resume,
            stop_after,
        } => {
            let r = recipe::load(&RecipeSource::with_sets(recipe, sets))?;
            let dev = device(&cli.device)?;
            let out = out.unwrap_or_else(|| PathBuf::from("weights").join(&r.name));
            let s = trainer::train(
                &r,
                &TrainOptions {
                    out,
                    resume,
                    stop_after,
                },
                &dev,
            )?;
            tracing::info!(
                "{} steps of {} in {:.1}s, last loss {:.4}: {}",
                s.steps_done,
                s.total_steps,
                s.seconds,
                s.last_loss,
                s.run_dir.display()
            );
            println!("{}", s.run_dir.display());
        }
        Cmd::Eval {
            run,
            protocol,
            random_init,
            sets,
        } => {
            let protocols = protocol
                .split(',')
                .map(|p| p.trim().parse::<Protocol>())
                .collect::<Result<Vec<_>, _>>()?;
            let dev = device(&cli.device)?;
            let target = EvalTarget::locate(&run)?;
            for json in vssl::eval::evaluate(&target, &protocols, random_init, &sets, &dev)? {
                println!("{json}");
            }
        }
        Cmd::Data {
            cmd:
                DataCmd::Synth {
                    out,
                    recipe,
                    sets,
                    fps,
                },
        } => synth(out, recipe, sets, fps)?,
    }
    Ok(())
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

fn main() -> ExitCode {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("VSSL_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let bad_input = e
                .downcast_ref::<vssl::Error>()
                .is_some_and(vssl::Error::is_bad_input);
            ExitCode::from(if bad_input { 2 } else { 1 })
        }
    }
}
