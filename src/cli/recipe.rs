//! `vssl recipe`: print the fully resolved recipe, optionally with the backbone's
//! parameter summary.

use std::path::PathBuf;

use vssl::recipe::{self, RecipeSource};

use super::DeviceSpec;

#[derive(clap::Args)]
pub struct Args {
    recipe: PathBuf,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Also print the backbone's architecture and parameter count, as TOML comment
    /// lines (`# backbone ...`) after the recipe on stdout, so the output stays valid TOML.
    #[arg(long)]
    summary: bool,
}

/// Needs no device: the summary counts parameters of a CPU-built backbone.
pub fn run(a: Args, _: &DeviceSpec) -> anyhow::Result<()> {
    let r = recipe::load(&RecipeSource::with_sets(a.recipe, a.sets))?;
    print!("{}", r.to_toml());
    if a.summary {
        println!("{}", vssl::app::summary::backbone_summary(&r)?);
    }
    Ok(())
}
