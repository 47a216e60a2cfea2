//! The standard Hub cache, shared with Python's `huggingface_hub`:
//!
//! ```text
//! <cache>/models--ORG--NAME/blobs/<etag>                 file contents
//! <cache>/models--ORG--NAME/refs/<revision>              the commit a branch points at
//! <cache>/models--ORG--NAME/snapshots/<commit>/<file>    symlink to ../../blobs/<etag>
//! ```
//!
//! Lookups go through `hf-hub` (its `local_files_only` resolution is exactly
//! `huggingface_hub`'s `try_to_load_from_cache`). Writes are by hand: `hf-hub` keeps
//! its layout writers private, and a blob must be verified before it appears (see
//! [`super::download`]). Every path component here has been checked by [`super::id`].

use std::path::{Path, PathBuf};

use super::id::{self, HubRef};
use crate::{Error, Result};

/// One repo's folder in the cache.
#[derive(Debug, Clone)]
pub struct RepoCache {
    root: PathBuf,
    dir: PathBuf,
}

impl RepoCache {
    pub fn new(cache_dir: &Path, r: &HubRef) -> Self {
        Self {
            root: cache_dir.to_path_buf(),
            dir: cache_dir.join(format!("models--{}--{}", r.owner, r.name)),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn blob(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(etag)
    }

    pub fn snapshot(&self, commit: &str, file: &str) -> PathBuf {
        self.dir.join("snapshots").join(commit).join(file)
    }

    pub fn ref_file(&self, revision: &str) -> PathBuf {
        self.dir.join("refs").join(revision)
    }

    /// The cached file for `r`, if the cache holds it (no network).
    pub fn lookup(&self, r: &HubRef) -> Option<PathBuf> {
        let client = hf_hub::HFClient::builder()
            .cache_dir(self.root.clone())
            .endpoint("http://localhost")
            .build_sync()
            .ok()?;
        let path = client
            .model(r.owner.clone(), r.name.clone())
            .download_file()
            .filename(r.file.clone())
            .revision(r.revision.clone())
            .local_files_only(true)
            .send()
            .ok()?;
        // A dangling symlink (blob deleted by hand) is not a cached file.
        path.is_file().then_some(path)
    }

    /// Stores a verified download: moves `tmp` (inside `blobs/`) to its blob, links the
    /// snapshot entry to it and points the revision's ref at `commit`.
    pub fn store(&self, r: &HubRef, commit: &str, etag: &str, tmp: &Path) -> Result<PathBuf> {
        id::check_etag(etag)?;
        if !id::is_commit_hash(commit) {
            return Err(Error::HubServer(format!(
                "the server announced the commit `{}`, which is not a 40-digit hex hash",
                commit.escape_debug()
            )));
        }
        let blob = self.blob(etag);
        std::fs::rename(tmp, &blob).map_err(|e| Error::io(&blob, e))?;
        self.link(r, commit, etag)
    }

    /// Links `snapshots/<commit>/<file>` to the blob and writes the ref.
    pub fn link(&self, r: &HubRef, commit: &str, etag: &str) -> Result<PathBuf> {
        let pointer = self.snapshot(commit, &r.file);
        let parent = pointer.parent().unwrap_or(&self.dir).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        // snapshots/<commit>/<a>/<b>/file -> ../../../../blobs/<etag>
        let depth = r.file.split('/').count() + 1;
        let mut target = PathBuf::new();
        for _ in 0..depth {
            target.push("..");
        }
        target.push("blobs");
        target.push(etag);
        let _ = std::fs::remove_file(&pointer);
        #[cfg(unix)]
        std::os::unix::fs::symlink(&target, &pointer).map_err(|e| Error::io(&pointer, e))?;
        #[cfg(not(unix))]
        std::fs::copy(self.blob(etag), &pointer).map_err(|e| Error::io(&pointer, e))?;
        if !id::is_commit_hash(&r.revision) {
            let rf = self.ref_file(&r.revision);
            if let Some(p) = rf.parent() {
                std::fs::create_dir_all(p).map_err(|e| Error::io(p, e))?;
            }
            crate::io::write_atomic(&rf, commit.as_bytes())?;
        }
        Ok(pointer)
    }
}
