//! The `vssl` command line: parse, call the library, map errors to exit codes
//! (0 ok, 2 bad input, 1 internal error). Logs go to stderr; results to stdout.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use candle_core::Device;
use clap::{Parser, Subcommand};

use vssl::app::eval::EvalOptions;
use vssl::app::train::{self as trainer, TrainOptions};
use vssl::backbone::extract::{self, ExtractOptions};
use vssl::backbone::import::{self, BackboneArgs, ImportOptions};
use vssl::eval::{EvalTarget, Protocol};
use vssl::recipe::{self, RecipeSource};
use vssl::report::{CompareOptions, GroupBy};
use vssl::sweep::local::{self, LocalOptions, Status};

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
        /// Also print the backbone's architecture and parameter count, as TOML comment
        /// lines (`# backbone ...`) after the recipe on stdout, so the output stays valid TOML.
        #[arg(long)]
        summary: bool,
    },
    /// Import a PyTorch checkpoint (.pth state dict) of a torchvision video model or
    /// VCOP's C3D as vssl weights (safetensors, same tensor names). Prints what was
    /// applied, missing and unused to stderr.
    Import {
        /// The .pth file: a state dict, or one under `state_dict` / `model`; `module.`
        /// prefixes are stripped.
        input: PathBuf,
        #[command(flatten)]
        backbone: BackboneOpts,
        /// The safetensors file to write.
        #[arg(long)]
        out: PathBuf,
        /// Keep initial values for backbone tensors the file lacks instead of failing.
        #[arg(long)]
        allow_missing: bool,
    },
    /// Extract pooled backbone features (before any classifier) of a video, a
    /// directory of videos, or a safetensors file of normalised `clips` [N,3,T,H,W].
    /// Writes `features` [N, C] with metadata `names`, `skipped`, `arch`, `weights`.
    Extract {
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
    },
    /// Evaluate a run's backbone downstream; prints one JSON line per protocol.
    Eval {
        /// Run directory (or a model.safetensors inside one).
        run: PathBuf,
        /// linear, knn, finetune, or a comma list (linear and knn share one feature extraction).
        #[arg(long, default_value = "linear")]
        protocol: String,
        /// Evaluate the same architecture untrained (the scratch baseline).
        #[arg(long)]
        random_init: bool,
        /// Run on each of these official splits and report mean and std, e.g. 1,2,3.
        #[arg(long)]
        splits: Option<String>,
        /// Continue an interrupted fine-tuning run.
        #[arg(long)]
        resume: bool,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Run a sweep file: every point (grid, zip, explicit runs, seeds) pretrained and
    /// evaluated, each in its own directory under weights/sweeps/<name>/. Every recipe
    /// is resolved first, so a bad key fails before anything runs; finished runs are
    /// skipped and stopped ones resumed, so rerunning continues an interrupted sweep.
    Sweep {
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
    },
    /// Compare runs: markdown + CSV tables (mean ± std over the runs of a row), loss
    /// and metric plots (PNG, SVG) and an index.md, written to --out.
    Compare {
        /// Run directories and/or sweep directories (folders of runs).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Rows: `group` (a sweep point, seeds pooled), `run` (every run), or dotted
        /// recipe keys such as `method.kind,backbone.norm`.
        #[arg(long, default_value = "group")]
        group_by: String,
        /// Metric columns, e.g. linear.top1,knn.recall@5,pretrain.final_loss
        /// (default: linear.top1, knn.recall@1, finetune.best.top1 where present).
        #[arg(long)]
        metrics: Option<String>,
    },
    /// Dataset utilities.
    Data {
        #[command(subcommand)]
        cmd: DataCmd,
    },
    /// Benchmarks: model and conv3d speed against PyTorch, the data pipeline against
    /// the ffmpeg CLI.
    Bench {
        #[command(subcommand)]
        cmd: BenchCmd,
    },
}

/// Which backbone `import` and `extract` build (shared by both commands).
#[derive(clap::Args)]
struct BackboneOpts {
    /// Architecture: r3d_18, mc3_18, r2plus1d_18, r3d_small or c3d (extract: default
    /// from the weights' metadata).
    #[arg(long)]
    arch: Option<String>,
    /// Take the backbone section (and data.frames) from this recipe.
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// Override a backbone key: --set backbone.widths=[2,2,2,2] (repeatable;
    /// `data.frames=N` sets the clip length TGN layers are built for).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

impl From<BackboneOpts> for BackboneArgs {
    fn from(o: BackboneOpts) -> Self {
        BackboneArgs {
            arch: o.arch,
            recipe: o.recipe,
            sets: o.sets,
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Executor {
    Local,
    Slurm,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Time a backbone's forward pass and training step (forward, backward, SGD) on
    /// random clips, print per-layer GFLOP/s, and with --torch the same step in
    /// PyTorch (tools/bench_torch.py) with the ratio vssl/torch.
    Model {
        /// r3d_18, mc3_18 or r2plus1d_18.
        #[arg(long, default_value = "r3d_18")]
        arch: String,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 8)]
        frames: usize,
        /// Height and width of the clips.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Timed repeats (medians reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Python with torch and torchvision: also run the PyTorch CPU step
        /// (default: $VSSL_TORCH_PYTHON when set).
        #[arg(long, env = "VSSL_TORCH_PYTHON")]
        torch: Option<PathBuf>,
        /// The PyTorch side's script.
        #[arg(long, default_value = "tools/bench_torch.py")]
        torch_script: PathBuf,
    },
    /// Time one conv3d layer (forward, forward+backward) on random data, with
    /// --torch against PyTorch's nn.Conv3d in the same run.
    Conv3d {
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long = "in", default_value_t = 64)]
        cin: usize,
        #[arg(long = "out", default_value_t = 64)]
        cout: usize,
        #[arg(long, default_value_t = 16)]
        frames: usize,
        #[arg(long, default_value_t = 56)]
        size: usize,
        #[arg(long, default_value_t = 3)]
        kernel: usize,
        #[arg(long, default_value_t = 1)]
        stride: usize,
        #[arg(long, default_value_t = 1)]
        pad: usize,
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Python with torch (default: $VSSL_TORCH_PYTHON when set).
        #[arg(long, env = "VSSL_TORCH_PYTHON")]
        torch: Option<PathBuf>,
        #[arg(long, default_value = "tools/bench_torch.py")]
        torch_script: PathBuf,
    },
    /// Data pipeline speed on the recipe's video files: vssl decode vs the ffmpeg CLI
    /// (frames/s, one core each), loader clips/s on the fly and from the cache.
    Data {
        recipe: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Runs per figure; medians are printed.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Loader steps per clips/s run.
        #[arg(long, default_value_t = 20)]
        steps: u64,
        /// Train-split videos decoded per frames/s run.
        #[arg(long, default_value_t = 64)]
        videos: usize,
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
        Cmd::Bench {
            cmd:
                BenchCmd::Model {
                    arch,
                    batch,
                    frames,
                    size,
                    reps,
                    torch,
                    torch_script,
                },
        } => {
            let dev = device(&cli.device)?;
            let opts = vssl::bench::BenchOptions {
                arch,
                batch,
                frames,
                size,
                reps,
                torch,
                torch_script,
            };
            let rep = vssl::bench::run(&opts, &dev)?;
            print!("{}", rep.render(&opts));
        }
        Cmd::Bench {
            cmd:
                BenchCmd::Conv3d {
                    batch,
                    cin,
                    cout,
                    frames,
                    size,
                    kernel,
                    stride,
                    pad,
                    reps,
                    torch,
                    torch_script,
                },
        } => {
            let dev = device(&cli.device)?;
            let opts = vssl::bench::ConvBenchOptions {
                batch,
                cin,
                cout,
                frames,
                size,
                kernel,
                stride,
                pad,
                reps,
                torch,
                torch_script,
            };
            print!("{}", vssl::bench::run_conv(&opts, &dev)?);
        }
        Cmd::Recipe {
            recipe,
            sets,
            summary,
        } => {
            let r = recipe::load(&RecipeSource::with_sets(recipe, sets))?;
            print!("{}", r.to_toml());
            if summary {
                println!("{}", backbone_summary(&r)?);
            }
        }
        Cmd::Import {
            input,
            backbone,
            out,
            allow_missing,
        } => {
            let opts = ImportOptions {
                input,
                out,
                backbone: backbone.into(),
                allow_missing,
            };
            let rep = import::import(&opts)?;
            let list = |v: &[String]| {
                if v.is_empty() {
                    "none".to_string()
                } else {
                    v.join(", ")
                }
            };
            eprintln!(
                "import {} as {}: applied {}; missing: {}; unused: {}",
                opts.input.display(),
                import::arch_name(rep.spec.cfg.arch),
                rep.load.applied.len(),
                list(&rep.load.missing),
                list(&rep.load.unused)
            );
            println!("{}", opts.out.display());
        }
        Cmd::Extract {
            weights,
            input,
            output,
            backbone,
            frames,
            size,
            clips,
            stride,
            batch,
        } => {
            let dev = device(&cli.device)?;
            let opts = ExtractOptions {
                weights,
                input,
                output,
                backbone: backbone.into(),
                frames,
                size,
                clips,
                stride,
                batch,
            };
            let s = extract::extract(&opts, &dev)?;
            tracing::info!(
                "{} feature rows of {} channels ({} inputs skipped)",
                s.rows,
                s.channels,
                s.skipped.len()
            );
            println!("{}", opts.output.display());
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
                "{} steps of {} in {:.1}s, last loss {:.4}, {} bad videos skipped: {}",
                s.steps_done,
                s.total_steps,
                s.seconds,
                s.last_loss,
                s.bad_videos,
                s.run_dir.display()
            );
            println!("{}", s.run_dir.display());
        }
        Cmd::Eval {
            run,
            protocol,
            random_init,
            splits,
            resume,
            sets,
        } => {
            let protocols = protocol
                .split(',')
                .map(|p| p.trim().parse::<Protocol>())
                .collect::<Result<Vec<_>, _>>()?;
            let splits = match splits {
                None => vec![],
                Some(s) => s
                    .split(',')
                    .map(|x| {
                        x.trim().parse::<u8>().map_err(|_| {
                            vssl::Error::BadInput(format!("--splits: `{x}` is not a split number"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            };
            let dev = device(&cli.device)?;
            let target = EvalTarget::locate(&run)?;
            let opts = EvalOptions {
                protocols,
                random_init,
                sets,
                splits,
                resume,
            };
            for json in vssl::app::eval::evaluate(&target, &opts, &dev)? {
                println!("{json}");
            }
        }
        Cmd::Sweep {
            file,
            jobs,
            dry_run,
            executor,
            submit,
            out,
            sets,
        } => {
            let sweep = vssl::sweep::load(&file, &sets, out.as_deref())?;
            if dry_run {
                print!("{}", vssl::sweep::plan_table(&sweep));
                return Ok(());
            }
            let exe = std::env::current_exe().context("locating the vssl executable")?;
            match executor {
                Executor::Local => {
                    let opts = LocalOptions {
                        jobs,
                        device: cli.device.clone(),
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
                    let job = vssl::sweep::slurm::write(&sweep, &exe, &cwd, &cli.device, submit)?;
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
        }
        Cmd::Compare {
            inputs,
            out,
            group_by,
            metrics,
        } => {
            let opts = CompareOptions {
                inputs,
                out,
                group_by: group_by.parse::<GroupBy>()?,
                metrics: metrics.map(|m| m.split(',').map(|x| x.trim().to_string()).collect()),
            };
            let res = vssl::report::compare(&opts)?;
            print!("{}", res.table);
            for f in &res.files {
                eprintln!("wrote {}", f.display());
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
        Cmd::Bench {
            cmd:
                BenchCmd::Data {
                    recipe,
                    sets,
                    repeat,
                    steps,
                    videos,
                },
        } => bench_data(recipe, sets, repeat, steps, videos)?,
        Cmd::Data {
            cmd:
                DataCmd::Cache {
                    recipe,
                    sets,
                    force,
                },
        } => cache(recipe, sets, force)?,
    }
    Ok(())
}

/// `# backbone r3d_18: 33,166,272 parameters (33,371,472 with a 400-class fc)`: the
/// count without the classifier, then with the recipe's classifier (or, when the recipe
/// builds none, with a Kinetics-400 one for comparison with published numbers).
fn backbone_summary(r: &recipe::Recipe) -> anyhow::Result<String> {
    let mut cfg = r.backbone.clone();
    let classes = cfg.num_classes.take();
    let vs = vssl::nn::VarStore::new(&Device::Cpu, 0);
    let net = vssl::backbone::build(&cfg, &vs, r.data.frames)?;
    let base = net.param_count();
    let n = classes.unwrap_or(400);
    let with_fc = base + net.out_channels() * n + n;
    let fc = import::classifier_prefix(cfg.arch);
    let which = if classes.is_some() { "its" } else { "a" };
    Ok(format!(
        "# backbone {}: {} parameters ({} with {which} {n}-class {fc})",
        import::arch_name(cfg.arch),
        thousands(base),
        thousands(with_fc)
    ))
}

/// `33166272` -> `33,166,272`.
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `vssl data cache`: builds (or confirms) the recipe's frame caches; prints their paths.
fn cache(recipe: PathBuf, sets: Vec<String>, force: bool) -> anyhow::Result<()> {
    use vssl::data::cache::{self, Refresh};
    let r = recipe::load(&RecipeSource::with_sets(recipe, sets))?;
    let tables =
        std::iter::once(("data", &r.data)).chain(r.eval.data.iter().map(|d| ("eval.data", d)));
    let mut any = false;
    for (name, cfg) in tables {
        let Some(dir) = &cfg.cache else { continue };
        any = true;
        let source = vssl::data::datasets::build(cfg)?;
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} videos {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let progress = |done: usize, total: usize| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        };
        match cache::refresh(dir, source.as_ref(), cfg, force, &progress)? {
            Refresh::UpToDate => tracing::info!("{name}.cache {} is up to date", dir.display()),
            Refresh::Built { reason, summary } => {
                bar.finish_and_clear();
                tracing::info!(
                    "{name}.cache {}: cached {} videos ({} unreadable), {:.1} MB ({reason})",
                    dir.display(),
                    summary.videos,
                    summary.unreadable,
                    summary.bytes as f64 / 1e6
                );
            }
        }
        println!("{}", dir.display());
    }
    if !any {
        return Err(vssl::Error::BadInput(
            "the recipe sets no data.cache: add `cache = \"DIR\"` to [data] or pass --set data.cache=\"DIR\"".into(),
        )
        .into());
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

#[cfg(feature = "video")]
fn bench_data(
    recipe: PathBuf,
    sets: Vec<String>,
    repeat: usize,
    steps: u64,
    videos: usize,
) -> anyhow::Result<()> {
    use vssl::data::bench::{self, BenchOptions};
    let r = recipe::load(&RecipeSource::with_sets(recipe, sets))?;
    let opts = BenchOptions {
        repeat,
        steps,
        videos,
    };
    let rep = bench::bench_data(&r, &opts, &std::env::temp_dir())?;
    println!(
        "decode: {} videos, {} frames, medians of {} runs",
        rep.videos, rep.frames, rep.repeat
    );
    println!(
        "  vssl   {:10.1} frames/s (1 thread, shorter side {})",
        rep.vssl_frames_per_s,
        r.data.short_side.unwrap_or(r.data.size)
    );
    println!(
        "  ffmpeg {:10.1} frames/s (-threads 1, -pix_fmt rgb24 -f null, {})",
        rep.ffmpeg_frames_per_s, rep.ffmpeg_mode
    );
    println!("  ratio vssl/ffmpeg {:.2}x", rep.decode_ratio);
    println!(
        "loader on the fly: {:.1} clips/s ({} workers)",
        rep.on_the_fly_clips_per_s, rep.workers
    );
    match (rep.cache_clips_per_s, rep.cache_ratio) {
        (Some(c), Some(x)) => {
            println!("loader from cache: {c:.1} clips/s, ratio {x:.1}x on-the-fly")
        }
        _ => println!("loader from cache: not measured (data.cache unset or not built)"),
    }
    println!("{}", serde_json::to_string(&rep)?);
    Ok(())
}

#[cfg(not(feature = "video"))]
fn bench_data(_: PathBuf, _: Vec<String>, _: usize, _: u64, _: usize) -> anyhow::Result<()> {
    Err(vssl::Error::BadInput("`vssl bench data` needs the `video` feature (ffmpeg)".into()).into())
}

fn main() -> ExitCode {
    // ffmpeg's own log lines (target `video`, via video-rs) are off by default: a bad
    // video's error already carries the reason, and the trainer warns once per video.
    let filter = tracing_subscriber::EnvFilter::try_from_env("VSSL_LOG")
        .unwrap_or_else(|_| "info,video=off".into());
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
