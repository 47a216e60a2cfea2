//! `vssl compare`: tables and plots over runs; prints the table, logs the files written.

use std::path::PathBuf;

use vssl::report::{CompareOptions, GroupBy};

use super::DeviceSpec;

#[derive(clap::Args)]
pub struct Args {
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
}

/// Reads run directories only; needs no device.
pub fn run(a: Args, _: &DeviceSpec) -> anyhow::Result<()> {
    let opts = CompareOptions {
        inputs: a.inputs,
        out: a.out,
        group_by: a.group_by.parse::<GroupBy>()?,
        metrics: a
            .metrics
            .map(|m| m.split(',').map(|x| x.trim().to_string()).collect()),
    };
    let res = vssl::report::compare(&opts)?;
    print!("{}", res.table);
    for f in &res.files {
        eprintln!("wrote {}", f.display());
    }
    Ok(())
}
