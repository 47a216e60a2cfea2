//! `vssl push`: commits a folder (usually `vssl export`'s) to a Hub model repo;
//! prints the commit URL.

use std::path::PathBuf;

use vssl::hub::push::{self, PushOptions};
use vssl::hub::HubEnv;

use super::DeviceSpec;

#[derive(clap::Args)]
pub struct Args {
    /// The folder to push.
    dir: PathBuf,
    /// The Hub repo, ORG/NAME (created when missing).
    #[arg(long)]
    repo: String,
    /// Create the repo private (when it does not exist yet).
    #[arg(long)]
    private: bool,
    /// Branch to commit to (default main; created when missing).
    #[arg(long)]
    revision: Option<String>,
    /// Open a pull request instead of committing to the branch.
    #[arg(long)]
    create_pr: bool,
    /// Commit message.
    #[arg(long)]
    message: Option<String>,
}

pub fn run(a: Args, _: &DeviceSpec) -> anyhow::Result<()> {
    let opts = PushOptions {
        repo: a.repo,
        private: a.private,
        revision: a.revision,
        create_pr: a.create_pr,
        message: a.message,
    };
    let env = HubEnv::from_env();
    let rep = push::push(&a.dir, &opts, &env)?;
    for f in &rep.files {
        eprintln!(
            "  {} ({} bytes, {})",
            f.path,
            f.size,
            match (f.lfs, f.uploaded) {
                (true, true) => "LFS, uploaded",
                (true, false) => "LFS, already on the Hub",
                (false, _) => "inline",
            }
        );
    }
    eprintln!(
        "pushed {} files to {}@{} (commit {})",
        rep.files.len(),
        rep.repo,
        rep.revision,
        rep.commit_oid
    );
    println!("{}", rep.pr_url.as_deref().unwrap_or(&rep.commit_url));
    Ok(())
}
