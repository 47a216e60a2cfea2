//! `vssl runs`: the table of runs under some folders (or `--json` for scripts).

use std::path::PathBuf;

use super::DeviceSpec;

#[derive(clap::Args)]
pub struct Args {
    /// Run directories or folders of runs (searched three levels deep).
    #[arg(default_value = "weights")]
    dirs: Vec<PathBuf>,
    /// One JSON array of runs on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

/// Reads run directories only; needs no device.
pub fn run(a: Args, _: &DeviceSpec) -> anyhow::Result<()> {
    let rows = vssl::report::listing::list(&a.dirs)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", vssl::report::listing::table(&rows));
    }
    Ok(())
}
