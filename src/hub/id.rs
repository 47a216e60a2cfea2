//! Hub names, parsed and checked before any of them becomes part of a URL or a path.
//!
//! Repo ids, revisions and file names come from users, registry files and servers:
//! each is refused when it could escape the cache directory (`..`, absolute paths,
//! backslashes, control characters) or is not a name the Hub itself accepts.

use std::fmt;

use crate::{Error, Result};

/// The scheme of a Hub reference.
pub const SCHEME: &str = "hf://";
/// The branch used when a reference names none.
pub const DEFAULT_REVISION: &str = "main";
/// The file used when a reference names none.
pub const DEFAULT_FILE: &str = "model.safetensors";

/// `hf://ORG/NAME[@REV][/FILE]`: one file of one revision of a model repo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRef {
    pub owner: String,
    pub name: String,
    pub revision: String,
    pub file: String,
}

fn bad(what: &str, value: &str, why: &str) -> Error {
    Error::BadInput(format!("Hub {what} `{}`: {why}", printable(value)))
}

/// A value as it can be shown in a message (control characters escaped).
fn printable(s: &str) -> String {
    s.chars().flat_map(char::escape_debug).collect()
}

/// One part of a repo id (`ORG` or `NAME`): letters, digits, `-`, `_`, `.`; not
/// starting or ending with `-` or `.`, no `--` or `..`, at most 96 characters (the
/// Hub's own rules).
pub fn check_repo_part(part: &str, what: &str) -> Result<()> {
    let ok_chars = part
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if part.is_empty() || part.len() > 96 {
        return Err(bad(what, part, "must be 1 to 96 characters"));
    }
    if !ok_chars {
        return Err(bad(
            what,
            part,
            "only letters, digits, `-`, `_` and `.` are allowed",
        ));
    }
    if part.starts_with(['-', '.']) || part.ends_with(['-', '.']) {
        return Err(bad(what, part, "must not start or end with `-` or `.`"));
    }
    if part.contains("--") || part.contains("..") {
        return Err(bad(what, part, "must not contain `--` or `..`"));
    }
    Ok(())
}

/// `ORG/NAME`.
pub fn parse_repo_id(id: &str) -> Result<(String, String)> {
    let (owner, name) = id
        .split_once('/')
        .ok_or_else(|| bad("repo id", id, "expected ORG/NAME"))?;
    check_repo_part(owner, "repo owner")?;
    check_repo_part(name, "repo name")?;
    Ok((owner.to_string(), name.to_string()))
}

/// A branch, tag, `refs/pr/N` or commit: letters, digits and `-_./`, no `..`, no
/// empty or dot-only segment, not absolute, at most 256 characters.
pub fn check_revision(rev: &str) -> Result<()> {
    if rev.is_empty() || rev.len() > 256 {
        return Err(bad("revision", rev, "must be 1 to 256 characters"));
    }
    if !rev
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    {
        return Err(bad(
            "revision",
            rev,
            "only letters, digits, `-`, `_`, `.` and `/` are allowed",
        ));
    }
    if rev
        .split('/')
        .any(|s| s.is_empty() || s.chars().all(|c| c == '.'))
        || rev.contains("..")
    {
        return Err(bad(
            "revision",
            rev,
            "must not contain `..` or empty segments",
        ));
    }
    Ok(())
}

/// A file path inside a repo: relative, `/`-separated, no `.`/`..`/empty segments, no
/// backslash or control characters, at most 1024 bytes.
pub fn check_file(file: &str) -> Result<()> {
    if file.is_empty() || file.len() > 1024 {
        return Err(bad("file name", file, "must be 1 to 1024 bytes"));
    }
    if file.starts_with('/') {
        return Err(bad("file name", file, "must be relative"));
    }
    if file.chars().any(|c| c.is_control() || c == '\\') {
        return Err(bad(
            "file name",
            file,
            "control characters and `\\` are not allowed",
        ));
    }
    if file
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(bad(
            "file name",
            file,
            "must not contain `.`, `..` or empty segments",
        ));
    }
    Ok(())
}

/// A commit hash as servers announce it (40 hex digits).
pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A blob name in the cache: the server's ETag, which is a git blob sha1 (40 hex) or
/// an LFS sha256 (64 hex). Anything else is refused before it becomes a path.
pub fn check_etag(etag: &str) -> Result<()> {
    if (etag.len() == 40 || etag.len() == 64) && etag.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(Error::HubServer(format!(
            "the server announced the ETag `{}`, which is not a 40- or 64-digit hex hash",
            printable(&etag.chars().take(80).collect::<String>())
        )))
    }
}

fn percent_decode(s: &str, what: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad(what, s, "bad %-escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad(what, s, "not UTF-8 once %-decoded"))
}

/// Percent-encodes one URL path segment (everything but unreserved characters).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes a file path, keeping its `/` separators.
pub fn encode_path(p: &str) -> String {
    p.split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

impl HubRef {
    /// A checked reference.
    pub fn new(repo_id: &str, revision: Option<&str>, file: Option<&str>) -> Result<Self> {
        let (owner, name) = parse_repo_id(repo_id)?;
        let revision = revision.unwrap_or(DEFAULT_REVISION).to_string();
        check_revision(&revision)?;
        let file = file.unwrap_or(DEFAULT_FILE).to_string();
        check_file(&file)?;
        Ok(Self {
            owner,
            name,
            revision,
            file,
        })
    }

    /// Parses `hf://ORG/NAME[@REV][/FILE]`. A revision holding `/` (`refs/pr/1`) is
    /// written %-encoded (`@refs%2Fpr%2F1`).
    pub fn parse(s: &str) -> Result<Self> {
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("reference", s, "expected hf://ORG/NAME[@REV][/FILE]"))?;
        let mut parts = rest.splitn(3, '/');
        let owner = parts.next().unwrap_or_default();
        let name_rev = parts
            .next()
            .ok_or_else(|| bad("reference", s, "expected hf://ORG/NAME[@REV][/FILE]"))?;
        let file = parts.next().filter(|f| !f.is_empty());
        let (name, rev) = match name_rev.split_once('@') {
            Some((n, r)) => (n, Some(percent_decode(r, "revision")?)),
            None => (name_rev, None),
        };
        let file = file.map(|f| percent_decode(f, "file name")).transpose()?;
        Self::new(&format!("{owner}/{name}"), rev.as_deref(), file.as_deref())
    }

    /// `ORG/NAME`.
    pub fn repo_id(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }

    /// The same repo and revision, another file.
    pub fn with_file(&self, file: &str) -> Result<Self> {
        check_file(file)?;
        Ok(Self {
            file: file.to_string(),
            ..self.clone()
        })
    }
}

impl fmt::Display for HubRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.owner, self.name)?;
        if self.revision != DEFAULT_REVISION {
            write!(f, "@{}", self.revision.replace('/', "%2F"))?;
        }
        write!(f, "/{}", self.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_short_forms() {
        let r = HubRef::parse("hf://org/name").unwrap();
        assert_eq!(
            (r.revision.as_str(), r.file.as_str()),
            ("main", "model.safetensors")
        );
        let r = HubRef::parse("hf://org/name@v1.0/sub/w.pth").unwrap();
        assert_eq!(r.repo_id(), "org/name");
        assert_eq!(
            (r.revision.as_str(), r.file.as_str()),
            ("v1.0", "sub/w.pth")
        );
        let r = HubRef::parse("hf://org/name@refs%2Fpr%2F3/w.pth").unwrap();
        assert_eq!(r.revision, "refs/pr/3");
        assert_eq!(r.to_string(), "hf://org/name@refs%2Fpr%2F3/w.pth");
        assert_eq!(HubRef::parse(&r.to_string()).unwrap(), r);
    }

    #[test]
    fn refuses_names_that_escape() {
        for s in [
            "hf://../name",
            "hf://org/..",
            "hf://org/name/../x",
            "hf://org/name/a/../../x",
            "hf://org/name@..%2F..%2Fx",
            "hf://org/name@%2Fetc",
            "hf://org/name/%2E%2E/x",
            "hf://org/name/a%5Cb",
            "hf://org/na me",
            "hf://org/name@a%00b",
            "hf://org",
            "org/name",
            "hf://org--x/name",
        ] {
            assert!(HubRef::parse(s).is_err(), "{s} was accepted");
        }
        assert!(check_etag("../../x").is_err());
        assert!(check_etag(&"a".repeat(64)).is_ok());
        assert!(is_commit_hash(&"0".repeat(40)) && !is_commit_hash("main"));
    }

    #[test]
    fn encodes_url_segments() {
        assert_eq!(encode_segment("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(encode_path("a b/c.pth"), "a%20b/c.pth");
    }
}
