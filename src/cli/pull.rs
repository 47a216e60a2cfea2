//! `vssl pull`: fetches published weights (a name from `registry/index.toml`, or an
//! `hf://` id) into the Hub cache, checks them, and prints the local path.

use vssl::hub::{self, HubEnv};

use super::DeviceSpec;

#[derive(clap::Args)]
pub struct Args {
    /// A registry name (see registry/index.toml) or hf://ORG/NAME[@REV][/FILE].
    name: String,
}

pub fn run(a: Args, _: &DeviceSpec) -> anyhow::Result<()> {
    if !a.name.starts_with(hub::id::SCHEME) && std::path::Path::new(&a.name).exists() {
        return Err(vssl::Error::BadInput(format!(
            "`{}` is a local path; pull takes a registry name or an hf:// id",
            a.name
        ))
        .into());
    }
    let r = hub::resolve(&a.name, &HubEnv::from_env())?;
    if let Some(e) = &r.entry {
        eprintln!("{}: sha256 {} ok", e.name, e.sha256);
    }
    println!("{}", r.path.display());
    Ok(())
}
