//! `vssl import`: a PyTorch checkpoint becomes vssl weights; reports what was applied,
//! missing and unused on stderr and prints the output path.

use std::path::PathBuf;

use vssl::app::import::{self, ImportOptions};
use vssl::backbone::arch::arch_name;

use super::{BackboneOpts, DeviceSpec};

#[derive(clap::Args)]
pub struct Args {
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
}

/// Runs on the CPU whatever `--device` says (the weights are only converted).
pub fn run(a: Args, _: &DeviceSpec) -> anyhow::Result<()> {
    let opts = ImportOptions {
        input: a.input,
        out: a.out,
        backbone: a.backbone.into(),
        allow_missing: a.allow_missing,
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
        arch_name(rep.spec.cfg.arch),
        rep.load.applied.len(),
        list(&rep.load.missing),
        list(&rep.load.unused)
    );
    println!("{}", opts.out.display());
    Ok(())
}
