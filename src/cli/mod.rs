//! The `vssl` subcommands, one module each: its clap `Args` (flags and their help) and
//! a `run` that calls the library and prints the result. Results go to stdout, logs to
//! stderr; errors travel up to `main`, which maps them to exit codes.

use std::path::PathBuf;

use candle_core::Device;

pub mod bench;
pub mod compare;
pub mod cuda_launch;
pub mod data;
pub mod eval;
pub mod export;
pub mod extract;
pub mod import;
pub mod plot;
pub mod pull;
pub mod push;
pub mod ranks;
pub mod recipe;
pub mod runs;
pub mod sweep;
pub mod train;

/// The global `--device` flag. Commands that compute turn it into a candle device
/// with [`DeviceSpec::device`] when they need one, so commands that do not (`recipe`,
/// `compare`, ...) neither fail on it nor initialise CUDA; `sweep` hands the spec on
/// to its child processes as written.
pub struct DeviceSpec(pub String);

impl DeviceSpec {
    /// `auto` (CUDA if built with it and present, else CPU), `cpu`, or `cuda[:N]`.
    pub fn device(&self) -> anyhow::Result<Device> {
        resolve(&self.0, "--device")
    }

    /// The device of a run whose recipe may name one (`train.device`): an explicit
    /// `--device cpu` / `cuda:N` wins; `--device auto` (the default) takes the
    /// recipe's choice when it has one.
    pub fn device_for(&self, recipe: Option<&str>) -> anyhow::Result<Device> {
        match (self.0.as_str(), recipe) {
            ("auto", Some(r)) => resolve(r, "train.device"),
            _ => self.device(),
        }
    }
}

/// The candle device `spec` names; errors name `what` (the flag or the recipe key).
fn resolve(spec: &str, what: &str) -> anyhow::Result<Device> {
    Ok(match spec {
        "cpu" => Device::Cpu,
        "auto" => {
            // A CUDA build on a machine whose driver finds no GPU (or fails to
            // start) falls back as a CPU build does, saying why.
            let why = if candle_core::utils::cuda_is_available() {
                match Device::new_cuda(0) {
                    Ok(d) => return Ok(d),
                    Err(e) => format!("no CUDA device answered ({e})"),
                }
            } else {
                cuda_launch::cuda_unavailable()
                    .unwrap_or("this build has no CUDA support")
                    .to_string()
            };
            tracing::info!("{what} auto: {why}; running on the CPU");
            Device::Cpu
        }
        // `cuda` or `cuda:N` (checked, so the index parses).
        s if vssl::train::config::valid_device(s) => {
            let n = s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            Device::new_cuda(n).map_err(|e| {
                let why = cuda_launch::cuda_unavailable().map_or(e.to_string(), str::to_string);
                vssl::Error::BadInput(format!("{what} {s}: {why}"))
            })?
        }
        other => {
            return Err(vssl::Error::BadInput(format!(
                "{what} {other}: expected auto, cpu or cuda[:N]"
            ))
            .into())
        }
    })
}

/// Which backbone `import` and `extract` build (shared by both commands).
#[derive(clap::Args)]
pub struct BackboneOpts {
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

impl From<BackboneOpts> for vssl::app::import::BackboneArgs {
    fn from(o: BackboneOpts) -> Self {
        Self {
            arch: o.arch,
            recipe: o.recipe,
            sets: o.sets,
        }
    }
}
