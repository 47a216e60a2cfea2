//! `vssl eval`: evaluate a run's backbone downstream; one JSON line per protocol.

use std::path::PathBuf;

use vssl::app::eval::EvalOptions;
use vssl::eval::Protocol;

use super::DeviceSpec;

#[derive(clap::Args)]
pub struct Args {
    /// Run directory (or a model.safetensors inside one); or an hf:// id, a registry
    /// name, or an exported folder / weights file with recipe metadata (evaluated in
    /// --out, default weights/hub/<name>).
    run: PathBuf,
    /// Where to evaluate weights that are not in a run directory.
    #[arg(long)]
    out: Option<PathBuf>,
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
}

/// `1,2,3` -> `[1, 2, 3]`; none given -> no splits.
fn parse_splits(splits: Option<String>) -> vssl::Result<Vec<u8>> {
    let Some(s) = splits else {
        return Ok(vec![]);
    };
    s.split(',')
        .map(|x| {
            x.trim().parse::<u8>().map_err(|_| {
                vssl::Error::BadInput(format!("--splits: `{x}` is not a split number"))
            })
        })
        .collect()
}

pub fn run(a: Args, device: &DeviceSpec) -> anyhow::Result<()> {
    let protocols = a
        .protocol
        .split(',')
        .map(|p| p.trim().parse::<Protocol>())
        .collect::<Result<Vec<_>, _>>()?;
    let splits = parse_splits(a.splits)?;
    let dev = device.device()?;
    let target = vssl::app::eval::target(&a.run, a.out.as_deref())?;
    let opts = EvalOptions {
        protocols,
        random_init: a.random_init,
        sets: a.sets,
        splits,
        resume: a.resume,
    };
    for json in vssl::app::eval::evaluate(&target, &opts, &dev)? {
        println!("{json}");
    }
    Ok(())
}
