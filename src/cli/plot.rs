//! `vssl plot`: training curves of runs as PNG and SVG; logs the files written.

use std::path::PathBuf;

use super::DeviceSpec;

#[derive(clap::Args)]
pub struct Args {
    /// Run directories (each with a metrics.jsonl).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
}

/// Reads run directories only; needs no device.
pub fn run(a: Args, _: &DeviceSpec) -> anyhow::Result<()> {
    for f in vssl::report::curves::plot_runs(&a.runs, &a.out)? {
        eprintln!("wrote {}", f.display());
    }
    Ok(())
}
