//! The `vssl` command line: parse, dispatch to the subcommand's module under `cli/`,
//! map errors to exit codes (0 ok, 2 bad input, 1 internal error). Logs go to stderr;
//! results to stdout.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

use cli::DeviceSpec;

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

// The subcommands' one-line help lives here, their flags in `cli::<name>::Args`.
#[derive(Subcommand)]
enum Cmd {
    /// Pretrain a backbone with the recipe's pretext method.
    Train(cli::train::Args),
    /// Print the fully resolved recipe (TOML).
    Recipe(cli::recipe::Args),
    /// Import a PyTorch checkpoint (.pth state dict) of a torchvision video model or
    /// VCOP's C3D as vssl weights (safetensors, same tensor names). Prints what was
    /// applied, missing and unused to stderr.
    Import(cli::import::Args),
    /// Extract pooled backbone features (before any classifier) of a video, a
    /// directory of videos, or a safetensors file of normalised `clips` [N,3,T,H,W].
    /// Writes `features` [N, C] with metadata `names`, `skipped`, `arch`, `weights`.
    Extract(cli::extract::Args),
    /// Evaluate a run's backbone downstream; prints one JSON line per protocol.
    Eval(cli::eval::Args),
    /// Run a sweep file: every point (grid, zip, explicit runs, seeds) pretrained and
    /// evaluated, each in its own directory under weights/sweeps/<name>/. Every recipe
    /// is resolved first, so a bad key fails before anything runs; finished runs are
    /// skipped and stopped ones resumed, so rerunning continues an interrupted sweep.
    Sweep(cli::sweep::Args),
    /// Compare runs: markdown + CSV tables (mean ± std over the runs of a row), loss
    /// and metric plots (PNG, SVG), an index.md and a self-contained index.html,
    /// written to --out.
    Compare(cli::compare::Args),
    /// Write a run as a Hub model repo folder: backbone weights (torchvision names),
    /// config.json and a model card with the run's evaluation results.
    Export(cli::export::Args),
    /// Commit a folder to a Hugging Face Hub model repo (token from HF_TOKEN or
    /// HF_HOME/token, endpoint from HF_ENDPOINT).
    Push(cli::push::Args),
    /// Fetch published weights (registry name or hf:// id) into the Hub cache and
    /// print the local path.
    Pull(cli::pull::Args),
    /// List runs: id, method, arch, data, step/total, state (running, finished,
    /// failed, interrupted), age and headline metrics, from the run directories.
    Runs(cli::runs::Args),
    /// Plot runs' training curves (loss and each loss term, lr, clips/s, data wait,
    /// grad norm) as PNG and SVG, the runs overlaid with a legend.
    Plot(cli::plot::Args),
    /// Dataset utilities.
    Data(cli::data::Args),
    /// Benchmarks: model and conv3d speed against PyTorch, the data pipeline against
    /// the ffmpeg CLI.
    Bench(cli::bench::Args),
}

fn run(cmd: Cmd, device: &DeviceSpec) -> anyhow::Result<()> {
    match cmd {
        Cmd::Train(a) => cli::train::run(a, device),
        Cmd::Recipe(a) => cli::recipe::run(a, device),
        Cmd::Import(a) => cli::import::run(a, device),
        Cmd::Extract(a) => cli::extract::run(a, device),
        Cmd::Eval(a) => cli::eval::run(a, device),
        Cmd::Sweep(a) => cli::sweep::run(a, device),
        Cmd::Compare(a) => cli::compare::run(a, device),
        Cmd::Export(a) => cli::export::run(a, device),
        Cmd::Push(a) => cli::push::run(a, device),
        Cmd::Pull(a) => cli::pull::run(a, device),
        Cmd::Runs(a) => cli::runs::run(a, device),
        Cmd::Plot(a) => cli::plot::run(a, device),
        Cmd::Data(a) => cli::data::run(a, device),
        Cmd::Bench(a) => cli::bench::run(a, device),
    }
}

#[global_allocator]
static ALLOC: vssl::alloc::TensorAlloc = vssl::alloc::TensorAlloc;

fn main() -> ExitCode {
    // A write past the file-size limit (`ulimit -f`, quota-like limits on clusters)
    // then fails with EFBIG and is reported, naming the file, instead of killing the
    // process with SIGXFSZ.
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to "ignore" has no preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    vssl::alloc::tune_heap();
    // ffmpeg's own log lines (target `video`, via video-rs) are off by default: a bad
    // video's error already carries the reason, and the trainer warns once per video.
    let filter = tracing_subscriber::EnvFilter::try_from_env("VSSL_LOG")
        .unwrap_or_else(|_| "info,video=off".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    cli::cuda_launch::maybe_exec_cuda(&args);
    let cli = Cli::parse_from(args);
    match run(cli.cmd, &DeviceSpec(cli.device)) {
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
