//! Committing a folder to a Hub model repo through the Hub's HTTP API, as
//! `huggingface_hub`'s `upload_folder` does without Xet:
//!
//! 1. `POST /api/repos/create` (409 "exists" is fine);
//! 2. `GET /api/models/ORG/NAME/revision/REV` for the parent commit (so a concurrent
//!    push makes the commit fail with 412 instead of being overwritten), creating the
//!    branch first when `--revision` names a new one;
//! 3. `POST /api/models/ORG/NAME/preupload/REV`: which files go through LFS;
//! 4. `POST /ORG/NAME.git/info/lfs/objects/batch` with each LFS file's sha256 and
//!    size, then `PUT` of the bytes (single part, or the multipart form when the server
//!    asks for it), then the verify call;
//! 5. `POST /api/models/ORG/NAME/commit/REV` with an NDJSON body: a header line, one
//!    `file` line per small file (base64 inline) and one `lfsFile` line per large one.
//!
//! Written by hand: `hf-hub` 1.0 uploads through Xet only. Nothing local is written,
//! so a failed push leaves the folder as it was.

use std::path::{Path, PathBuf};

use base64::Engine;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde_json::{json, Value};
use std::io::Read;

use super::env::HubEnv;
use super::http::{Auth, Client};
use super::id::{self, encode_segment};
use crate::{Error, Result};

const LFS_JSON: &str = "application/vnd.git-lfs+json";

/// What `vssl push` does.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// `ORG/NAME`.
    pub repo: String,
    /// Create the repo private (only when it does not exist yet).
    pub private: bool,
    /// Branch to commit to (default `main`); created from `main` when missing.
    pub revision: Option<String>,
    /// Open a pull request instead of committing to the branch.
    pub create_pr: bool,
    /// Commit summary.
    pub message: Option<String>,
}

/// One file of the commit.
#[derive(Debug, Clone, PartialEq)]
pub struct PushedFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    /// Went through LFS (else inline in the commit).
    pub lfs: bool,
    /// Bytes were uploaded (an LFS object the server already had is not).
    pub uploaded: bool,
}

/// What a push did.
#[derive(Debug, Clone)]
pub struct PushReport {
    pub repo: String,
    pub revision: String,
    pub commit_url: String,
    pub commit_oid: String,
    pub pr_url: Option<String>,
    pub files: Vec<PushedFile>,
}

struct LocalFile {
    rel: String,
    path: PathBuf,
    size: u64,
    sha256: String,
    sample: Vec<u8>,
}

/// Every file under `dir` (recursively, sorted; hidden files and folders skipped
/// except `.gitattributes`).
fn collect(dir: &Path) -> Result<Vec<LocalFile>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<LocalFile>) -> Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') && name != ".gitattributes" {
                continue;
            }
            let path = e.path();
            if path.is_dir() {
                walk(root, &path, out)?;
                continue;
            }
            let rel = path
                .strip_prefix(root)
                .map_err(|_| Error::Internal("walk left the folder".into()))?
                .components()
                .map(|c| c.as_os_str().to_string_lossy().to_string())
                .collect::<Vec<_>>()
                .join("/");
            id::check_file(&rel)?;
            // Hash streaming; only the first 512 bytes (the preupload sample) are kept.
            let mut sample = Vec::with_capacity(512);
            std::fs::File::open(&path)
                .and_then(|f| f.take(512).read_to_end(&mut sample))
                .map_err(|e| Error::io(&path, e))?;
            out.push(LocalFile {
                rel,
                size: std::fs::metadata(&path)
                    .map_err(|e| Error::io(&path, e))?
                    .len(),
                sha256: super::download::sha256_file(&path)?,
                sample,
                path,
            });
        }
        Ok(())
    }
    if !dir.is_dir() {
        return Err(Error::BadInput(format!(
            "{}: not a folder (push a folder written by `vssl export`)",
            dir.display()
        )));
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    if out.is_empty() {
        return Err(Error::BadInput(format!(
            "{}: no files to push",
            dir.display()
        )));
    }
    Ok(out)
}

fn json_of(what: &str, resp: reqwest::blocking::Response) -> Result<Value> {
    let text = resp
        .text()
        .map_err(|e| Error::HubServer(format!("{what}: reading the answer: {e}")))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::HubServer(format!("{what}: the server's answer is not JSON ({e})")))
}

/// Pushes every file of `dir` to the repo in one commit (see the module docs).
pub fn push(dir: &Path, opts: &PushOptions, env: &HubEnv) -> Result<PushReport> {
    let (owner, name) = id::parse_repo_id(&opts.repo)?;
    let revision = opts
        .revision
        .clone()
        .unwrap_or_else(|| id::DEFAULT_REVISION.into());
    id::check_revision(&revision)?;
    if env.offline {
        return Err(Error::Hub("cannot push with HF_HUB_OFFLINE set".into()));
    }
    if env.token.is_none() {
        return Err(Error::Hub(
            "no Hub token: set HF_TOKEN, or log in with `huggingface-cli login` (which writes \
             HF_HOME/token)"
                .into(),
        ));
    }
    let files = collect(dir)?;
    let client = Client::new(env)?;
    let repo = format!("{owner}/{name}");
    let api = format!("/api/models/{owner}/{name}");
    let rev = encode_segment(&revision);
    let pr_query: &[(&str, &str)] = if opts.create_pr {
        &[("create_pr", "1")]
    } else {
        &[]
    };

    // 1. The repo.
    let what = format!("push to {repo}: creating the repo");
    let resp = client.send(&what, Auth::Token, || {
        client
            .http()
            .post(client.url("/api/repos/create"))
            .json(&json!({
                "type": "model", "name": name, "organization": owner, "private": opts.private,
            }))
    })?;
    match resp.status().as_u16() {
        409 => tracing::info!("{repo} exists; committing to it"),
        403 => {
            // A token may be allowed to write to an existing repo but not to create repos
            // in its namespace: go on when the repo is there.
            let info = client.send(&what, Auth::Token, || client.http().get(client.url(&api)))?;
            if !info.status().is_success() {
                client.check(&what, resp)?;
            }
        }
        _ => {
            client.check(&what, resp)?;
            tracing::info!(
                "created {repo}{}",
                if opts.private { " (private)" } else { "" }
            );
        }
    }

    // 2. The parent commit (creating the branch when it is new).
    let what = format!("push to {repo}@{revision}: reading the revision");
    let get_rev = || {
        client.send(&what, Auth::Token, || {
            client
                .http()
                .get(client.url(&format!("{api}/revision/{rev}")))
        })
    };
    let mut resp = get_rev()?;
    if resp.status().as_u16() == 404 && revision != id::DEFAULT_REVISION && !opts.create_pr {
        let what_b = format!("push to {repo}: creating branch {revision}");
        client.send_ok(&what_b, Auth::Token, || {
            client
                .http()
                .post(client.url(&format!("{api}/branch/{rev}")))
                .json(&json!({}))
        })?;
        tracing::info!("created branch {revision} of {repo}");
        resp = get_rev()?;
    }
    let parent = json_of(&what, client.check(&what, resp)?)?
        .get("sha")
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some(p) = &parent {
        if !id::is_commit_hash(p) {
            return Err(Error::HubServer(format!(
                "{what}: the server announced the commit `{}`, not a 40-digit hex hash",
                p.escape_debug()
            )));
        }
    }

    // 3. Which files go through LFS.
    let what = format!("push to {repo}@{revision}: preupload check");
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut modes: Vec<Option<bool>> = vec![None; files.len()];
    let mut ignored = vec![false; files.len()];
    for (chunk_i, chunk) in files.chunks(256).enumerate() {
        let body = json!({ "files": chunk.iter().map(|f| json!({
            "path": f.rel, "size": f.size, "sample": b64.encode(&f.sample),
        })).collect::<Vec<_>>() });
        let answer = json_of(
            &what,
            client.send_ok(&what, Auth::Token, || {
                client
                    .http()
                    .post(client.url(&format!("{api}/preupload/{rev}")))
                    .query(pr_query)
                    .json(&body)
            })?,
        )?;
        let listed = answer
            .get("files")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::HubServer(format!("{what}: the answer has no `files` list")))?;
        for entry in listed {
            let path = entry
                .get("path")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let Some(i) = chunk.iter().position(|f| f.rel == path) else {
                continue;
            };
            if entry.get("shouldIgnore").and_then(Value::as_bool) == Some(true) {
                tracing::warn!("{path}: the repo's .gitignore excludes it; not pushed");
                ignored[chunk_i * 256 + i] = true;
                modes[chunk_i * 256 + i] = Some(false);
                continue;
            }
            let mode = entry
                .get("uploadMode")
                .and_then(Value::as_str)
                .unwrap_or("");
            modes[chunk_i * 256 + i] = Some(match mode {
                "lfs" => true,
                "regular" => false,
                other => {
                    return Err(Error::HubServer(format!(
                        "{what}: unknown upload mode `{other}` for {path}"
                    )))
                }
            });
        }
    }
    if let Some(i) = modes.iter().position(Option::is_none) {
        return Err(Error::HubServer(format!(
            "{what}: the answer does not mention {}",
            files[i].rel
        )));
    }
    let lfs: Vec<bool> = modes.iter().map(|m| m.unwrap_or(false)).collect();

    // 4. LFS uploads.
    let mut uploaded = vec![false; files.len()];
    let lfs_files: Vec<usize> = (0..files.len()).filter(|&i| lfs[i]).collect();
    if !lfs_files.is_empty() {
        let what = format!("push to {repo}: LFS batch");
        let body = json!({
            "operation": "upload",
            "transfers": ["basic", "multipart"],
            "hash_algo": "sha256",
            "ref": { "name": format!("refs/heads/{revision}") },
            "objects": lfs_files.iter().map(|&i| json!({
                "oid": files[i].sha256, "size": files[i].size,
            })).collect::<Vec<_>>(),
        });
        let answer = json_of(
            &what,
            client.send_ok(&what, Auth::Token, || {
                client
                    .http()
                    .post(client.url(&format!("/{owner}/{name}.git/info/lfs/objects/batch")))
                    .header(ACCEPT, LFS_JSON)
                    .header(CONTENT_TYPE, LFS_JSON)
                    .body(body.to_string())
            })?,
        )?;
        let objects = answer
            .get("objects")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::HubServer(format!("{what}: the answer has no `objects` list")))?;
        for &i in &lfs_files {
            let f = &files[i];
            let obj = objects
                .iter()
                .find(|o| o.get("oid").and_then(Value::as_str) == Some(f.sha256.as_str()))
                .ok_or_else(|| {
                    Error::HubServer(format!("{what}: the answer does not mention {}", f.rel))
                })?;
            if let Some(err) = obj.get("error") {
                return Err(Error::Hub(env.redact(&format!(
                    "{what}: the LFS server refused {}: {}",
                    f.rel,
                    err.get("message").and_then(Value::as_str).unwrap_or("no reason given")
                ))));
            }
            let Some(actions) = obj.get("actions") else {
                tracing::info!("{}: already on the Hub ({} bytes)", f.rel, f.size);
                continue;
            };
            if let Some(up) = actions.get("upload") {
                upload_lfs(&client, &repo, f, up)?;
                uploaded[i] = true;
            }
            if let Some(verify) = actions.get("verify") {
                let href = verify
                    .get("href")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let auth = if href.starts_with(&env.endpoint) {
                    Auth::Token
                } else {
                    Auth::None
                };
                let what = format!("push to {repo}: verifying {}", f.rel);
                client.send_ok(&what, auth, || {
                    let mut req = client
                        .http()
                        .post(href)
                        .header(ACCEPT, LFS_JSON)
                        .header(CONTENT_TYPE, LFS_JSON)
                        .body(json!({ "oid": f.sha256, "size": f.size }).to_string());
                    for (k, v) in header_map(verify) {
                        req = req.header(k, v);
                    }
                    req
                })?;
            }
        }
    }

    // 5. The commit.
    let what = format!("push to {repo}@{revision}: commit");
    let summary = opts
        .message
        .clone()
        .unwrap_or_else(|| format!("Upload {} files with vssl", files.len()));
    let mut header = json!({ "summary": summary, "description": "" });
    if let Some(p) = &parent {
        header["parentCommit"] = json!(p);
    }
    let mut lines = vec![json!({ "key": "header", "value": header }).to_string()];
    for (i, f) in files.iter().enumerate().filter(|(i, _)| !ignored[*i]) {
        let line = if lfs[i] {
            json!({ "key": "lfsFile", "value": {
                "path": f.rel, "algo": "sha256", "oid": f.sha256, "size": f.size,
            }})
        } else {
            let bytes = std::fs::read(&f.path).map_err(|e| Error::io(&f.path, e))?;
            json!({ "key": "file", "value": {
                "path": f.rel, "encoding": "base64", "content": b64.encode(bytes),
            }})
        };
        lines.push(line.to_string());
    }
    let body = lines.join("\n") + "\n";
    let answer = json_of(
        &what,
        client.send_ok(&what, Auth::Token, || {
            client
                .http()
                .post(client.url(&format!("{api}/commit/{rev}")))
                .query(pr_query)
                .header(CONTENT_TYPE, "application/x-ndjson")
                .body(body.clone())
        })?,
    )?;
    let s = |k: &str| answer.get(k).and_then(Value::as_str).map(str::to_string);
    Ok(PushReport {
        repo,
        revision,
        commit_url: s("commitUrl").unwrap_or_default(),
        commit_oid: s("commitOid").unwrap_or_default(),
        pr_url: s("pullRequestUrl"),
        files: files
            .iter()
            .enumerate()
            .filter(|(i, _)| !ignored[*i])
            .map(|(i, f)| PushedFile {
                path: f.rel.clone(),
                size: f.size,
                sha256: f.sha256.clone(),
                lfs: lfs[i],
                uploaded: uploaded[i],
            })
            .collect(),
    })
}

/// The string fields of an LFS action's `header` object.
fn header_map(action: &Value) -> Vec<(String, String)> {
    action
        .get("header")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Uploads one LFS object: a single `PUT`, or, when the action's header carries
/// `chunk_size`, one `PUT` per numbered part URL and a completion `POST` with the
/// parts' ETags. Upload URLs never get the Hub token.
fn upload_lfs(client: &Client, repo: &str, f: &LocalFile, action: &Value) -> Result<()> {
    let what = format!("push to {repo}: uploading {} ({} bytes)", f.rel, f.size);
    let href = action
        .get("href")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::HubServer(format!("{what}: the upload action has no href")))?;
    let data = std::fs::read(&f.path).map_err(|e| Error::io(&f.path, e))?;
    let headers = header_map(action);
    let chunk_size = headers
        .iter()
        .find(|(k, _)| k == "chunk_size")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let Some(chunk_size) = chunk_size.filter(|c| *c > 0) else {
        client.send_ok(&what, Auth::None, || {
            let mut req = client.http().put(href).body(data.clone());
            for (k, v) in &headers {
                req = req.header(k.as_str(), v.as_str());
            }
            req
        })?;
        return Ok(());
    };
    let mut parts: Vec<(usize, String)> = headers
        .iter()
        .filter_map(|(k, v)| k.parse::<usize>().ok().map(|n| (n, v.clone())))
        .collect();
    parts.sort();
    let needed = data.len().div_ceil(chunk_size);
    if parts.len() != needed || parts.iter().enumerate().any(|(i, (n, _))| *n != i + 1) {
        return Err(Error::HubServer(format!(
            "{what}: the server asked for {} parts of {chunk_size} bytes; {needed} are needed",
            parts.len()
        )));
    }
    let mut etags = Vec::with_capacity(parts.len());
    for (n, url) in &parts {
        let lo = (n - 1) * chunk_size;
        let hi = (lo + chunk_size).min(data.len());
        let resp = client.send_ok(&format!("{what}: part {n}"), Auth::None, || {
            client.http().put(url).body(data[lo..hi].to_vec())
        })?;
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::HubServer(format!("{what}: part {n} got no ETag")))?
            .to_string();
        etags.push(json!({ "partNumber": n, "etag": etag }));
    }
    client.send_ok(&format!("{what}: completing"), Auth::None, || {
        client
            .http()
            .post(href)
            .header(ACCEPT, LFS_JSON)
            .header(CONTENT_TYPE, LFS_JSON)
            .body(json!({ "oid": f.sha256, "parts": etags }).to_string())
    })?;
    Ok(())
}
