//! The Hugging Face Hub: names, the local cache, downloads and pushes.
//!
//! Weights are shared as Hub model repos and loaded back by id
//! (`hf://ORG/NAME[@REV][/FILE]`). This module is the only place that talks to a Hub
//! server or touches the Hub cache, so the rules for untrusted remote names, the
//! token and the cache layout live in one room:
//!
//! - [`id`]: parsing and validating repo ids, revisions and file names (remote names
//!   never escape the cache directory);
//! - [`env`](mod@env): endpoint, token, cache directory and offline mode from the standard
//!   `HF_*` variables, the token wrapped so it cannot be printed;
//! - [`http`]: one HTTP client with retries on 5xx, and the status -> error mapping;
//! - [`cache`]: the standard cache layout (`models--ORG--NAME/{blobs,refs,snapshots}`),
//!   shared with Python's `huggingface_hub`;
//! - [`download`]: verified downloads into that cache (size and sha256 checked before
//!   a file enters it);
//! - [`push`]: committing a folder through the Hub HTTP API (preupload, LFS, NDJSON);
//! - [`index`]: `registry/index.toml`, the list of published weights.
//!
//! [`resolve`] turns any weights argument (a path, an `hf://` id or a registry name)
//! into a local file.

pub mod cache;
pub mod download;
pub mod env;
pub mod http;
pub mod id;
pub mod index;
pub mod push;

use std::path::{Path, PathBuf};

pub use env::HubEnv;
pub use id::HubRef;
pub use index::{Index, IndexEntry};

use crate::{Error, Result};

/// Where a weights argument came from, with the local file it resolved to.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub path: PathBuf,
    /// The Hub reference, when the argument was an `hf://` id or a registry name.
    pub hub: Option<HubRef>,
    /// The registry entry, when the argument was a registry name.
    pub entry: Option<IndexEntry>,
}

/// Resolves a weights argument: an existing path is used as it is; `hf://...` is
/// fetched through the cache ([`download::fetch`]); otherwise a name listed in the
/// registry index is fetched and its sha256 checked against the index.
pub fn resolve(arg: &str, env: &HubEnv) -> Result<Resolved> {
    if arg.starts_with(id::SCHEME) {
        let r = HubRef::parse(arg)?;
        let path = download::fetch(&r, env)?;
        return Ok(Resolved {
            path,
            hub: Some(r),
            entry: None,
        });
    }
    let p = Path::new(arg);
    if p.exists() {
        return Ok(Resolved {
            path: p.to_path_buf(),
            hub: None,
            entry: None,
        });
    }
    let index = Index::load_default()?;
    if let Some(entry) = index.get(arg) {
        let r = entry.hub_ref()?;
        let path = download::fetch(&r, env)?;
        entry.check_sha256(&path)?;
        return Ok(Resolved {
            path,
            hub: Some(r),
            entry: Some(entry.clone()),
        });
    }
    Err(Error::BadInput(format!(
        "`{arg}`: no such file, and not an hf://ORG/NAME[@REV][/FILE] id or a name in {} \
         (names: {})",
        index.source(),
        index.names_or_none()
    )))
}

/// [`resolve`] for arguments held as paths (clap's `PathBuf`): non-UTF-8 paths are
/// always local.
pub fn resolve_path(arg: &Path, env: &HubEnv) -> Result<Resolved> {
    match arg.to_str() {
        Some(s) => resolve(s, env),
        None => Ok(Resolved {
            path: arg.to_path_buf(),
            hub: None,
            entry: None,
        }),
    }
}
