//! `vssl bench`: model and conv3d speed against PyTorch, the data pipeline against the
//! ffmpeg CLI (the measurements are in [`vssl::app::bench`]).

use std::path::PathBuf;

use clap::Subcommand;
use vssl::app::bench::{self, BenchOptions, ConvBenchOptions};

use super::DeviceSpec;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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
        /// Untimed training steps before the repeats, on both sides (PyTorch's
        /// first two or three steps after start-up run 30-50% slow).
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Python with torch and torchvision: also run the PyTorch CPU step
        /// (default: $VSSL_TORCH_PYTHON when set).
        #[arg(long, env = "VSSL_TORCH_PYTHON")]
        torch: Option<PathBuf>,
        /// The PyTorch side's script.
        #[arg(long, default_value = "tools/bench_torch.py")]
        torch_script: PathBuf,
    },
    /// Check every 3D op (conv3d, batch norm, TGN, pooling) on --device against the
    /// CPU kernels, forward and gradients, in f32 and bf16; exits 1 if one is off.
    Ops,
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
        /// Also build a raw and a JPEG frame cache of the recipe's dataset in a
        /// temporary directory and time the loader reading each (size and clips/s).
        #[arg(long)]
        caches: bool,
    },
    /// Decode the frames a plan lists (JSON `[{"path": ..., "frames": [...]}]`, all
    /// frames when the list is empty) as the loader does, and print the time as JSON:
    /// vssl's side of tools/bench_decoders.py.
    Decode {
        plan: PathBuf,
        /// Frames are resized so their shorter side has this many pixels (0: the
        /// stored size).
        #[arg(long, default_value_t = 128)]
        short_side: usize,
        /// Also write each file's frames to DIR (`<i>.rgb`, `<i>.json`), untimed.
        #[arg(long)]
        dump: Option<PathBuf>,
        /// Passes over the plan (one JSON line each).
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Always decode at full resolution (as `data.decode_lowres = false`).
        #[arg(long)]
        full_res: bool,
    },
}

/// `model` and `conv3d` run on `--device`; `data` measures the CPU pipeline.
pub fn run(a: Args, device: &DeviceSpec) -> anyhow::Result<()> {
    match a.cmd {
        Cmd::Model {
            arch,
            batch,
            frames,
            size,
            reps,
            warmup,
            torch,
            torch_script,
        } => {
            let dev = device.device()?;
            let opts = BenchOptions {
                arch,
                batch,
                frames,
                size,
                reps,
                warmup,
                torch,
                torch_script,
            };
            let rep = bench::run(&opts, &dev)?;
            print!("{}", rep.render(&opts));
        }
        Cmd::Ops => {
            let (report, ok) = bench::run_ops(&device.device()?)?;
            print!("{report}");
            if !ok {
                anyhow::bail!("bench ops: some ops are outside their tolerance (table above)");
            }
        }
        Cmd::Conv3d {
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
        } => {
            let dev = device.device()?;
            let opts = ConvBenchOptions {
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
            print!("{}", bench::run_conv(&opts, &dev)?);
        }
        Cmd::Data {
            recipe,
            sets,
            repeat,
            steps,
            videos,
            caches,
        } => data(recipe, sets, repeat, steps, videos, caches)?,
        Cmd::Decode {
            plan,
            short_side,
            repeat,
            full_res,
            dump,
        } => decode(plan, short_side, repeat, !full_res, dump)?,
    }
    Ok(())
}

#[cfg(feature = "video")]
fn data(
    recipe: PathBuf,
    sets: Vec<String>,
    repeat: usize,
    steps: u64,
    videos: usize,
    caches: bool,
) -> anyhow::Result<()> {
    use vssl::recipe::{self, RecipeSource};
    let r = recipe::load(&RecipeSource::with_sets(recipe, sets))?;
    let opts = bench::data::BenchOptions {
        repeat,
        steps,
        videos,
        caches,
    };
    let rep = bench::data::bench_data(&r, &opts, &std::env::temp_dir())?;
    print!("{}", rep.render(r.data.short_side.unwrap_or(r.data.size)));
    println!("{}", serde_json::to_string(&rep)?);
    Ok(())
}

#[cfg(feature = "video")]
fn decode(
    plan: PathBuf,
    short_side: usize,
    repeat: usize,
    lowres: bool,
    dump: Option<PathBuf>,
) -> anyhow::Result<()> {
    let items = bench::decode::read_plan(&plan)?;
    let short = (short_side > 0).then_some(short_side);
    if let Some(d) = &dump {
        std::fs::create_dir_all(d).map_err(|e| vssl::Error::io(d, e))?;
    }
    for _ in 0..repeat.max(1) {
        let t = bench::decode::run_plan(&items, short, lowres, dump.as_deref())?;
        println!("{}", serde_json::to_string(&t)?);
    }
    Ok(())
}

#[cfg(not(feature = "video"))]
fn decode(_: PathBuf, _: usize, _: usize, _: bool, _: Option<PathBuf>) -> anyhow::Result<()> {
    Err(
        vssl::Error::BadInput("`vssl bench decode` needs the `video` feature (ffmpeg)".into())
            .into(),
    )
}

#[cfg(not(feature = "video"))]
fn data(_: PathBuf, _: Vec<String>, _: usize, _: u64, _: usize, _: bool) -> anyhow::Result<()> {
    Err(vssl::Error::BadInput("`vssl bench data` needs the `video` feature (ffmpeg)".into()).into())
}
