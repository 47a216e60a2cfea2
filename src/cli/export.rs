//! `vssl export`: a run directory becomes a Hub model repo folder (weights, config,
//! model card); prints the folder.

use std::path::PathBuf;

use vssl::app::export::{self, ExportOptions};

use super::DeviceSpec;

#[derive(clap::Args)]
pub struct Args {
    /// The run directory (weights/<run>).
    run: PathBuf,
    /// The folder to write (must not exist, or be empty).
    #[arg(long)]
    out: PathBuf,
    /// Keep the method's pretext heads (`pretext.*`) for resuming pretraining elsewhere.
    #[arg(long)]
    with_heads: bool,
    /// The Hub repo the folder is meant for (ORG/NAME), used in the card's snippets.
    #[arg(long)]
    repo: Option<String>,
    /// The card's license (default mit).
    #[arg(long)]
    license: Option<String>,
    /// Export the fine-tuned model of eval/<STEM>/ (e.g. finetune) instead of the
    /// pretrained backbone.
    #[arg(long, value_name = "STEM")]
    finetune: Option<String>,
    /// The Hub repo of the pretrained model (the card's base_model), ORG/NAME.
    #[arg(long)]
    base_model: Option<String>,
}

/// Runs on the CPU whatever `--device` says (nothing is computed).
pub fn run(a: Args, _: &DeviceSpec) -> anyhow::Result<()> {
    for r in a.repo.iter().chain(&a.base_model) {
        vssl::hub::id::parse_repo_id(r)?;
    }
    let opts = ExportOptions {
        run: a.run,
        out: a.out,
        with_heads: a.with_heads,
        repo: a.repo,
        license: a.license,
        finetune: a.finetune,
        base_model: a.base_model,
    };
    let rep = export::export(&opts)?;
    eprintln!(
        "export {}: {} tensors{}, {} evaluation results in the card",
        opts.run.display(),
        rep.tensors,
        if rep.dropped.is_empty() {
            String::new()
        } else {
            format!(
                " ({} head tensors left out; --with-heads keeps them)",
                rep.dropped.len()
            )
        },
        rep.results
    );
    println!("{}", opts.out.display());
    Ok(())
}
