//! Verified downloads into the Hub cache.
//!
//! Written here rather than through `hf-hub`'s `download_file`, which (in 1.0) uses
//! the server's `ETag` and `X-Repo-Commit` headers as path components unchecked,
//! moves a download into the cache without checking its size or hash, and needs Xet
//! for Xet-backed files. Here, before anything enters the cache: the announced commit
//! and ETag are checked to be hex hashes, the body streams to a temp file inside
//! `blobs/`, and its size and hash (sha256 for LFS files, the git blob sha1 for the
//! others) must equal what the server announced, else the temp file is deleted.
//! Cache lookups do go through `hf-hub` ([`super::cache::RepoCache::lookup`]).

use std::io::{Read, Write};
use std::path::PathBuf;

use reqwest::header::{HeaderMap, ACCEPT_ENCODING, CONTENT_LENGTH, LOCATION};
use sha2::Digest;

use super::cache::RepoCache;
use super::env::HubEnv;
use super::http::{Auth, Client};
use super::id::{self, HubRef};
use crate::{Error, Result};

/// What the server says about a file before it is downloaded.
#[derive(Debug, Clone)]
struct Meta {
    commit: String,
    etag: String,
    size: u64,
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
}

/// `hf://...` as a local file: from the cache when offline (or when the revision is a
/// commit already cached), else after checking the server's current commit, reusing a
/// cached blob or downloading it. When the network fails and the cache holds the
/// file, the cached copy is used with a warning.
pub fn fetch(r: &HubRef, env: &HubEnv) -> Result<PathBuf> {
    let cache = RepoCache::new(&env.cache_dir, r);
    if env.offline {
        return cache.lookup(r).ok_or_else(|| {
            Error::Hub(format!(
                "{r}: file `{}` of repo {} (revision {}) is not in the Hub cache {} and \
                 HF_HUB_OFFLINE is set; fetch it once online (`vssl pull`) or unset \
                 HF_HUB_OFFLINE",
                r.file,
                r.repo_id(),
                r.revision,
                env.cache_dir.display()
            ))
        });
    }
    if id::is_commit_hash(&r.revision) {
        if let Some(p) = cache.lookup(r) {
            return Ok(p);
        }
    }
    let client = Client::new(env)?;
    let meta = match metadata(&client, r) {
        Ok(m) => m,
        Err(Error::HubServer(msg)) => {
            if let Some(p) = cache.lookup(r) {
                tracing::warn!("{msg}; using the cached copy {}", p.display());
                return Ok(p);
            }
            return Err(Error::HubServer(msg));
        }
        Err(e) => return Err(e),
    };
    if cache.blob(&meta.etag).is_file() {
        return cache.link(r, &meta.commit, &meta.etag);
    }
    download(&client, r, &cache, &meta)
}

fn resolve_url(client: &Client, r: &HubRef) -> String {
    client.url(&format!(
        "/{}/{}/resolve/{}/{}",
        r.owner,
        r.name,
        id::encode_segment(&r.revision),
        id::encode_path(&r.file)
    ))
}

/// A HEAD on the resolve URL, not following redirects (the headers of an LFS file's
/// redirect carry its sha256 and size), except relative ones (a renamed repo).
fn metadata(client: &Client, r: &HubRef) -> Result<Meta> {
    let what = format!("{r}");
    let mut url = resolve_url(client, r);
    for _ in 0..5 {
        let resp = client.send(&what, Auth::Token, || {
            client
                .http_no_redirect()
                .head(&url)
                .header(ACCEPT_ENCODING, "identity")
        })?;
        let status = resp.status();
        if status.is_redirection() {
            let loc = header(resp.headers(), LOCATION.as_str()).unwrap_or_default();
            if loc.starts_with('/') {
                url = client.url(&loc);
                continue;
            }
        } else if status.as_u16() == 404 {
            let code = header(resp.headers(), "x-error-code").unwrap_or_default();
            let thing = match code.as_str() {
                "RepoNotFound" => format!(
                    "repo {} (or it is private and the token cannot read it)",
                    r.repo_id()
                ),
                "RevisionNotFound" => format!("revision `{}` of repo {}", r.revision, r.repo_id()),
                _ => format!(
                    "file `{}` in repo {} at revision {}",
                    r.file,
                    r.repo_id(),
                    r.revision
                ),
            };
            return Err(Error::Hub(format!("{what}: not found (404): no {thing}")));
        }
        let resp = if status.is_success() || status.is_redirection() {
            resp
        } else {
            client.check(&what, resp)?
        };
        let h = resp.headers();
        let commit = header(h, "x-repo-commit").ok_or_else(|| {
            Error::HubServer(format!("{what}: the server sent no X-Repo-Commit header"))
        })?;
        let etag = header(h, "x-linked-etag")
            .or_else(|| header(h, "etag"))
            .ok_or_else(|| Error::HubServer(format!("{what}: the server sent no ETag")))?;
        let etag = etag
            .strip_prefix("W/")
            .unwrap_or(&etag)
            .trim_matches('"')
            .to_string();
        let size = match header(h, "x-linked-size") {
            Some(s) => Some(s),
            // A redirect's own Content-Length is its body's: ask where it points.
            None if status.is_redirection() => {
                let loc = header(h, LOCATION.as_str()).unwrap_or_default();
                client
                    .send(&what, Auth::None, || {
                        client.http().head(&loc).header(ACCEPT_ENCODING, "identity")
                    })
                    .ok()
                    .and_then(|r| header(r.headers(), CONTENT_LENGTH.as_str()))
            }
            None => header(h, CONTENT_LENGTH.as_str()),
        }
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| Error::HubServer(format!("{what}: the server announced no file size")))?;
        id::check_etag(&etag).map_err(|e| Error::HubServer(format!("{what}: {e}")))?;
        if !id::is_commit_hash(&commit) {
            return Err(Error::HubServer(format!(
                "{what}: the server announced the commit `{}`, not a 40-digit hex hash",
                commit.escape_debug()
            )));
        }
        return Ok(Meta { commit, etag, size });
    }
    Err(Error::HubServer(format!("{what}: too many redirects")))
}

/// The hash a file must have to match its ETag: sha256 of the bytes (LFS, 64 hex) or
/// the git blob sha1 of `blob <len>\0<bytes>` (regular files, 40 hex).
enum Hasher {
    Sha256(sha2::Sha256),
    GitSha1(sha1::Sha1),
}

impl Hasher {
    fn for_etag(etag: &str, size: u64) -> Self {
        if etag.len() == 64 {
            Hasher::Sha256(sha2::Sha256::new())
        } else {
            let mut h = sha1::Sha1::new();
            h.update(format!("blob {size}\0").as_bytes());
            Hasher::GitSha1(h)
        }
    }

    fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(b),
            Hasher::GitSha1(h) => h.update(b),
        }
    }

    fn hex(self) -> String {
        let bytes: Vec<u8> = match self {
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::GitSha1(h) => h.finalize().to_vec(),
        };
        to_hex(&bytes)
    }
}

/// Lowercase hex of a digest.
fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Streams the file into a temp file in `blobs/`, checks size and hash, then stores it.
fn download(client: &Client, r: &HubRef, cache: &RepoCache, meta: &Meta) -> Result<PathBuf> {
    let what = format!("{r}");
    let blobs = cache.dir().join("blobs");
    std::fs::create_dir_all(&blobs).map_err(|e| Error::io(&blobs, e))?;
    let tmp = blobs.join(format!(".{}.incomplete-{}", meta.etag, std::process::id()));
    let result = (|| -> Result<()> {
        let url = resolve_url(client, r);
        let mut resp = client.send_ok(&what, Auth::Token, || {
            client.http().get(&url).header(ACCEPT_ENCODING, "identity")
        })?;
        let mut file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut hasher = Hasher::for_etag(&meta.etag, meta.size);
        let bar = (meta.size > 16 << 20).then(|| {
            let b = indicatif::ProgressBar::new(meta.size);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_message(format!("download {}", r.file));
            b
        });
        let mut got: u64 = 0;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = resp.read(&mut buf).map_err(|e| {
                Error::HubServer(format!(
                    "{what}: download interrupted after {got} bytes: {e}"
                ))
            })?;
            if n == 0 {
                break;
            }
            got += n as u64;
            if got > meta.size {
                return Err(Error::HubServer(format!(
                    "{what}: the server sent more than the {} bytes it announced; discarded",
                    meta.size
                )));
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(|e| Error::io(&tmp, e))?;
            if let Some(b) = &bar {
                b.set_position(got);
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        if got != meta.size {
            return Err(Error::HubServer(format!(
                "{what}: got {got} bytes, the server announced {}; discarded",
                meta.size
            )));
        }
        let hex = hasher.hex();
        if hex != meta.etag.to_ascii_lowercase() {
            return Err(Error::HubServer(format!(
                "{what}: the downloaded bytes hash to {hex}, the server announced {}; discarded",
                meta.etag
            )));
        }
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    cache
        .store(r, &meta.commit, &meta.etag, &tmp)
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

/// The sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &std::path::Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(to_hex(&h.finalize()))
}
