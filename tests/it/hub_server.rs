//! A loopback stand-in for the Hugging Face Hub, for the push and download tests: it
//! implements the endpoints vssl uses (repo creation, revision info, branch creation,
//! preupload, the LFS batch API with upload and verify, NDJSON commits, and the
//! resolve URLs with the Hub's headers) and checks what it receives: the token, the
//! parent commit, each LFS object's sha256 and size, every commit line.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use base64::Engine;
use serde_json::{json, Value};
use sha2::Digest;

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One repo's state.
#[derive(Debug, Clone, Default)]
pub struct Repo {
    pub private: bool,
    /// branch -> head commit
    pub branches: BTreeMap<String, String>,
    /// path -> (bytes, went through LFS)
    pub files: BTreeMap<String, (Vec<u8>, bool)>,
    /// Each commit: (summary, lines of the NDJSON body)
    pub commits: Vec<(String, Vec<Value>)>,
}

/// How a served file lies about itself.
#[derive(Debug, Clone, Default)]
pub struct Lie {
    pub size: Option<u64>,
    pub etag: Option<String>,
    pub commit: Option<String>,
}

#[derive(Debug, Default)]
pub struct State {
    /// The only token accepted.
    pub token: String,
    /// Repos the token may not write to (create and commit answer 403).
    pub read_only: Vec<String>,
    pub repos: BTreeMap<String, Repo>,
    pub lfs: BTreeMap<String, Vec<u8>>,
    /// Files larger than this go through LFS.
    pub lfs_threshold: u64,
    /// (path prefix, status, times left): the next `times` requests whose path starts
    /// with the prefix get `status` (usize::MAX = always).
    pub fail: Vec<(String, u16, usize)>,
    /// Ask for multipart LFS uploads with parts of this many bytes.
    pub multipart_chunk: Option<usize>,
    /// Multipart uploads in progress: oid -> parts received (part number -> bytes).
    pub parts: BTreeMap<String, BTreeMap<usize, Vec<u8>>>,
    /// Move the branch head before answering the next commit (a concurrent push).
    pub move_head_before_commit: bool,
    /// (repo, file) -> what the resolve endpoint should claim.
    pub lies: BTreeMap<(String, String), Lie>,
    pub seen: Vec<Seen>,
    commit_counter: u64,
}

pub struct HubServer {
    pub url: String,
    pub state: Arc<Mutex<State>>,
}

fn commit_sha(n: u64) -> String {
    let h = sha1::Sha1::digest(format!("commit {n}").as_bytes());
    h.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_hex(b: &[u8]) -> String {
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn git_sha1(b: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", b.len()).as_bytes());
    h.update(b);
    h.finalize().iter().map(|x| format!("{x:02x}")).collect()
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn reply(status: u16, body: Value) -> Reply {
    Reply {
        status,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
    }
}

fn err(status: u16, msg: &str) -> Reply {
    reply(status, json!({ "error": msg }))
}

impl HubServer {
    pub fn start(token: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            token: token.to_string(),
            lfs_threshold: 1024,
            ..Default::default()
        }));
        let st = state.clone();
        let base = url.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let st = st.clone();
                let base = base.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &st, &base);
                });
            }
        });
        Self { url, state }
    }

    /// Adds a repo holding `files` (path -> bytes; LFS by the threshold) at one commit.
    pub fn add_repo(&self, repo: &str, files: &[(&str, &[u8])]) -> String {
        let mut s = self.state.lock().unwrap();
        s.commit_counter += 1;
        let sha = commit_sha(s.commit_counter + 1000);
        let threshold = s.lfs_threshold;
        let mut r = Repo::default();
        r.branches.insert("main".into(), sha.clone());
        for (p, b) in files {
            let lfs = b.len() as u64 > threshold;
            r.files.insert(p.to_string(), (b.to_vec(), lfs));
        }
        s.repos.insert(repo.to_string(), r);
        sha
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn repo(&self, repo: &str) -> Option<Repo> {
        self.state.lock().unwrap().repos.get(repo).cloned()
    }
}

fn read_request(stream: &mut TcpStream) -> std::io::Result<Seen> {
    let mut r = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target, String::new()),
    };
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    Ok(Seen {
        method,
        path,
        query,
        headers,
        body,
    })
}

fn serve(mut stream: TcpStream, st: &Arc<Mutex<State>>, base: &str) -> std::io::Result<()> {
    let req = read_request(&mut stream)?;
    let rep = handle(&req, st, base);
    st.lock().unwrap().seen.push(req.clone());
    let reason = match rep.status {
        200 => "OK",
        302 => "Found",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        412 => "Precondition Failed",
        500 => "Internal Server Error",
        _ => "Status",
    };
    let mut head = format!("HTTP/1.1 {} {reason}\r\nConnection: close\r\n", rep.status);
    let mut has_len = false;
    for (k, v) in &rep.headers {
        has_len |= k.eq_ignore_ascii_case("content-length");
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_len {
        head.push_str(&format!("Content-Length: {}\r\n", rep.body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if req.method != "HEAD" {
        stream.write_all(&rep.body)?;
    }
    stream.flush()
}

fn authorized(req: &Seen, s: &State) -> bool {
    req.header("authorization") == Some(format!("Bearer {}", s.token).as_str())
}

fn handle(req: &Seen, st: &Arc<Mutex<State>>, base: &str) -> Reply {
    let mut s = st.lock().unwrap();
    // Injected failures first.
    if let Some(f) = s
        .fail
        .iter_mut()
        .find(|f| req.path.starts_with(&f.0) && f.2 > 0)
    {
        if f.2 != usize::MAX {
            f.2 -= 1;
        }
        return err(f.1, "injected failure");
    }
    let segs: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    let m = req.method.as_str();
    // LFS upload URLs (presigned-like: no token expected, none accepted).
    if segs.first() == Some(&"lfs-upload") && m == "PUT" {
        if req.header("authorization").is_some() {
            return err(400, "the Hub token was sent to a storage URL");
        }
        let oid = segs.get(1).copied().unwrap_or_default().to_string();
        if sha256_hex(&req.body) != oid {
            return err(400, "uploaded bytes do not hash to the oid");
        }
        s.lfs.insert(oid, req.body.clone());
        return reply(200, json!({}));
    }
    // Multipart: PUT /lfs-part/OID/N answers an ETag; POST /lfs-complete/OID joins.
    if segs.first() == Some(&"lfs-part") && m == "PUT" {
        if req.header("authorization").is_some() {
            return err(400, "the Hub token was sent to a storage URL");
        }
        let oid = segs.get(1).copied().unwrap_or_default().to_string();
        let n: usize = segs.get(2).and_then(|n| n.parse().ok()).unwrap_or(0);
        let etag = format!("\"etag-{n}-{}\"", &sha256_hex(&req.body)[..8]);
        s.parts.entry(oid).or_default().insert(n, req.body.clone());
        return Reply {
            status: 200,
            headers: vec![("ETag".into(), etag)],
            body: vec![],
        };
    }
    if segs.first() == Some(&"lfs-complete") && m == "POST" {
        let oid = segs.get(1).copied().unwrap_or_default().to_string();
        let v: Value = serde_json::from_slice(&req.body).unwrap_or_default();
        let parts = s.parts.remove(&oid).unwrap_or_default();
        let listed = v["parts"].as_array().cloned().unwrap_or_default();
        if listed.len() != parts.len() || v["oid"] != oid.as_str() {
            return err(400, "completion does not list every part");
        }
        let mut joined = Vec::new();
        for (i, (n, bytes)) in parts.iter().enumerate() {
            let want = format!("\"etag-{n}-{}\"", &sha256_hex(bytes)[..8]);
            if listed[i]["partNumber"] != *n || listed[i]["etag"] != want.as_str() {
                return err(400, "part numbers or ETags do not match");
            }
            joined.extend_from_slice(bytes);
        }
        if sha256_hex(&joined) != oid {
            return err(400, "joined parts do not hash to the oid");
        }
        s.lfs.insert(oid, joined);
        return reply(200, json!({}));
    }
    if segs.first() == Some(&"lfs-verify") && m == "POST" {
        let v: Value = serde_json::from_slice(&req.body).unwrap_or_default();
        let oid = v["oid"].as_str().unwrap_or_default();
        return match s.lfs.get(oid) {
            Some(b) if Some(b.len() as u64) == v["size"].as_u64() => reply(200, json!({})),
            _ => err(404, "object not uploaded"),
        };
    }
    // The storage an LFS download is redirected to (another host name, so the token
    // must not follow).
    if segs.first() == Some(&"cdn") && (m == "GET" || m == "HEAD") {
        if req.header("authorization").is_some() {
            return err(400, "the Hub token followed the redirect to storage");
        }
        let oid = segs.get(1).copied().unwrap_or_default();
        let found = s
            .repos
            .values()
            .flat_map(|r| r.files.values())
            .find(|(b, _)| sha256_hex(b) == oid);
        return match found {
            Some((b, _)) => Reply {
                status: 200,
                headers: vec![("Content-Length".into(), b.len().to_string())],
                body: if m == "GET" { b.clone() } else { vec![] },
            },
            None => err(404, "no such object"),
        };
    }
    // Downloads: /ORG/NAME/resolve/REV/FILE...
    if segs.len() >= 5 && segs[2] == "resolve" && (m == "HEAD" || m == "GET") {
        let repo_id = format!("{}/{}", segs[0], segs[1]);
        let rev = segs[3].replace("%2F", "/");
        let file = segs[4..].join("/");
        let Some(repo) = s.repos.get(&repo_id) else {
            let mut r = err(404, "Repository not found");
            r.headers
                .push(("X-Error-Code".into(), "RepoNotFound".into()));
            return r;
        };
        if repo.private && !authorized(req, &s) {
            return err(401, "Invalid credentials");
        }
        let commit = if rev.len() == 40 {
            rev.clone()
        } else if let Some(c) = repo.branches.get(&rev) {
            c.clone()
        } else {
            let mut r = err(404, "Revision not found");
            r.headers
                .push(("X-Error-Code".into(), "RevisionNotFound".into()));
            return r;
        };
        let Some((bytes, lfs)) = repo.files.get(&file) else {
            let mut r = err(404, "Entry not found");
            r.headers
                .push(("X-Error-Code".into(), "EntryNotFound".into()));
            r.headers.push(("X-Repo-Commit".into(), commit));
            return r;
        };
        let lie = s
            .lies
            .get(&(repo_id.clone(), file.clone()))
            .cloned()
            .unwrap_or_default();
        let size = lie.size.unwrap_or(bytes.len() as u64);
        let commit = lie.commit.unwrap_or(commit);
        let mut headers = vec![("X-Repo-Commit".to_string(), commit)];
        if *lfs {
            let etag = lie.etag.unwrap_or_else(|| sha256_hex(bytes));
            headers.push(("X-Linked-Etag".into(), format!("\"{etag}\"")));
            headers.push(("X-Linked-Size".into(), size.to_string()));
            headers.push(("ETag".into(), format!("\"{}\"", git_sha1(b"pointer"))));
            // As the Hub does: LFS files redirect to storage on another host.
            let cdn = base.replace("127.0.0.1", "localhost");
            headers.push((
                "Location".into(),
                format!("{cdn}/cdn/{}", sha256_hex(bytes)),
            ));
            return Reply {
                status: 302,
                headers,
                body: vec![],
            };
        } else {
            let etag = lie.etag.unwrap_or_else(|| git_sha1(bytes));
            headers.push(("ETag".into(), format!("\"{etag}\"")));
        }
        if m == "HEAD" {
            headers.push(("Content-Length".into(), size.to_string()));
            return Reply {
                status: 200,
                headers,
                body: vec![],
            };
        }
        return Reply {
            status: 200,
            headers,
            body: bytes.clone(),
        };
    }
    // Everything below needs the token.
    if !authorized(req, &s) {
        return err(401, "Invalid credentials in Authorization header");
    }
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    match (m, segs.as_slice()) {
        ("POST", ["api", "repos", "create"]) => {
            let id = format!(
                "{}/{}",
                body["organization"].as_str().unwrap_or_default(),
                body["name"].as_str().unwrap_or_default()
            );
            if s.read_only.contains(&id) {
                return err(
                    403,
                    "You don't have the rights to create a model under this namespace",
                );
            }
            if s.repos.contains_key(&id) {
                return err(409, "You already created this model repo");
            }
            s.commit_counter += 1;
            let sha = commit_sha(s.commit_counter);
            let mut r = Repo {
                private: body["private"].as_bool().unwrap_or(false),
                ..Default::default()
            };
            r.branches.insert("main".into(), sha);
            s.repos.insert(id.clone(), r);
            reply(200, json!({ "url": format!("{base}/{id}") }))
        }
        ("GET", ["api", "models", o, n]) => match s.repos.contains_key(&format!("{o}/{n}")) {
            true => reply(200, json!({ "id": format!("{o}/{n}") })),
            false => err(404, "Repository not found"),
        },
        ("GET", ["api", "models", o, n, "revision", rev]) => {
            let rev = rev.replace("%2F", "/");
            match s
                .repos
                .get(&format!("{o}/{n}"))
                .and_then(|r| r.branches.get(&rev))
            {
                Some(sha) => reply(200, json!({ "sha": sha })),
                None => err(404, "Revision not found"),
            }
        }
        ("POST", ["api", "models", o, n, "branch", rev]) => {
            let id = format!("{o}/{n}");
            let rev = rev.replace("%2F", "/");
            let Some(r) = s.repos.get_mut(&id) else {
                return err(404, "Repository not found");
            };
            let head = r.branches["main"].clone();
            r.branches.insert(rev, head);
            reply(200, json!({}))
        }
        ("POST", ["api", "models", _, _, "preupload", _]) => {
            let threshold = s.lfs_threshold;
            let files: Vec<Value> = body["files"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|f| {
                    let big = f["size"].as_u64().unwrap_or(0) > threshold;
                    json!({ "path": f["path"], "uploadMode": if big { "lfs" } else { "regular" },
                            "shouldIgnore": false })
                })
                .collect();
            reply(200, json!({ "files": files }))
        }
        ("POST", [o, n, "info", "lfs", "objects", "batch"]) if n.ends_with(".git") => {
            let _ = o;
            if req.header("accept") != Some("application/vnd.git-lfs+json") {
                return err(400, "LFS batch needs Accept: application/vnd.git-lfs+json");
            }
            let objects: Vec<Value> = body["objects"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|ob| {
                    let oid = ob["oid"].as_str().unwrap_or_default();
                    let size = ob["size"].as_u64().unwrap_or(0) as usize;
                    if s.lfs.contains_key(oid) {
                        json!({ "oid": oid, "size": ob["size"] })
                    } else if let Some(chunk) = s.multipart_chunk {
                        let mut header = serde_json::Map::new();
                        header.insert("chunk_size".into(), json!(chunk.to_string()));
                        for n in 1..=size.div_ceil(chunk) {
                            header.insert(format!("{n:05}"), json!(format!("{base}/lfs-part/{oid}/{n}")));
                        }
                        json!({ "oid": oid, "size": ob["size"], "actions": {
                            "upload": { "href": format!("{base}/lfs-complete/{oid}"), "header": header },
                            "verify": { "href": format!("{base}/lfs-verify"), "header": {} },
                        }})
                    } else {
                        json!({ "oid": oid, "size": ob["size"], "actions": {
                            "upload": { "href": format!("{base}/lfs-upload/{oid}"), "header": {} },
                            "verify": { "href": format!("{base}/lfs-verify"), "header": {} },
                        }})
                    }
                })
                .collect();
            reply(200, json!({ "transfer": "basic", "objects": objects }))
        }
        ("POST", ["api", "models", o, n, "commit", rev]) => {
            let id = format!("{o}/{n}");
            let rev = rev.replace("%2F", "/");
            if s.read_only.contains(&id) {
                return err(403, "You don't have write access");
            }
            if s.move_head_before_commit {
                s.move_head_before_commit = false;
                s.commit_counter += 1;
                let sha = commit_sha(s.commit_counter);
                if let Some(r) = s.repos.get_mut(&id) {
                    r.branches.insert(rev.clone(), sha);
                }
            }
            if req.header("content-type") != Some("application/x-ndjson") {
                return err(400, "commit needs application/x-ndjson");
            }
            let lines: Vec<Value> = String::from_utf8_lossy(&req.body)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
                .collect();
            let Some(head) = lines.first().filter(|h| h["key"] == "header") else {
                return err(400, "first line must be the header");
            };
            let summary = head["value"]["summary"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let parent = head["value"]["parentCommit"].as_str().map(str::to_string);
            let lfs_store = s.lfs.clone();
            s.commit_counter += 1;
            let sha = commit_sha(s.commit_counter);
            let Some(r) = s.repos.get_mut(&id) else {
                return err(404, "Repository not found");
            };
            let Some(current) = r.branches.get(&rev).cloned() else {
                return err(404, "Revision not found");
            };
            if parent.as_deref().is_some_and(|p| p != current) {
                return err(
                    412,
                    "A commit has happened since. Please refresh and try again.",
                );
            }
            let b64 = base64::engine::general_purpose::STANDARD;
            for l in &lines[1..] {
                let v = &l["value"];
                let path = v["path"].as_str().unwrap_or_default().to_string();
                match l["key"].as_str() {
                    Some("file") => {
                        if v["encoding"] != "base64" {
                            return err(400, "file lines must be base64");
                        }
                        let Ok(bytes) = b64.decode(v["content"].as_str().unwrap_or_default())
                        else {
                            return err(400, "bad base64");
                        };
                        r.files.insert(path, (bytes, false));
                    }
                    Some("lfsFile") => {
                        let oid = v["oid"].as_str().unwrap_or_default();
                        match lfs_store.get(oid) {
                            Some(b)
                                if Some(b.len() as u64) == v["size"].as_u64()
                                    && v["algo"] == "sha256" =>
                            {
                                r.files.insert(path, (b.clone(), true));
                            }
                            _ => {
                                return err(
                                    422,
                                    "lfsFile points at an object that was never uploaded",
                                )
                            }
                        }
                    }
                    _ => return err(400, "unknown commit line"),
                }
            }
            r.commits.push((summary, lines.clone()));
            let create_pr = req.query.contains("create_pr=1");
            if !create_pr {
                r.branches.insert(rev.clone(), sha.clone());
            }
            let mut answer =
                json!({ "commitUrl": format!("{base}/{id}/commit/{sha}"), "commitOid": sha });
            if create_pr {
                answer["pullRequestUrl"] = json!(format!("{base}/{id}/discussions/1"));
            }
            reply(200, answer)
        }
        _ => err(404, &format!("no route for {m} {}", req.path)),
    }
}
