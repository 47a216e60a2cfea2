//! The Hub settings a process gets from its environment, as Python's
//! `huggingface_hub` reads them, so both tools share one login and one cache:
//! `HF_ENDPOINT`, `HF_TOKEN` (else the token file `HF_TOKEN_PATH`, else
//! `HF_HOME/token`), `HF_HUB_CACHE` / `HF_HOME/hub`, and `HF_HUB_OFFLINE`.

use std::fmt;
use std::path::PathBuf;

/// The default Hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// An access token. It has no `Display`, its `Debug` prints `***`, and error messages
/// pass through [`Token::redact`], so it cannot reach a log, a file or a panic message
/// by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A token from its text (trimmed); `None` when empty.
    pub fn new(text: &str) -> Option<Self> {
        let t = text.trim();
        (!t.is_empty()).then(|| Self(t.to_string()))
    }

    /// The `Authorization` header value.
    pub(crate) fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// `text` with every occurrence of the token replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        text.replace(&self.0, "***")
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

/// Endpoint, token, cache and offline mode.
#[derive(Debug, Clone)]
pub struct HubEnv {
    /// Base URL without a trailing `/`.
    pub endpoint: String,
    pub token: Option<Token>,
    /// The hub cache (`models--ORG--NAME/...` live directly under it).
    pub cache_dir: PathBuf,
    /// Read only the cache; never touch the network.
    pub offline: bool,
}

fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "on" | "yes" | "true"
    )
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl HubEnv {
    /// Settings from the environment (see the module docs). The cache directory comes
    /// from `hf-hub`'s resolution (`HF_HUB_CACHE`, `HUGGINGFACE_HUB_CACHE`,
    /// `HF_HOME/hub`, `XDG_CACHE_HOME/huggingface/hub`, `~/.cache/huggingface/hub`).
    pub fn from_env() -> Self {
        let endpoint = var("HF_ENDPOINT")
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
            .trim()
            .trim_end_matches('/')
            .to_string();
        let token = var("HF_TOKEN").and_then(|t| Token::new(&t)).or_else(|| {
            let file = var("HF_TOKEN_PATH")
                .map(PathBuf::from)
                .unwrap_or_else(|| hf_hub::hf_home().join("token"));
            std::fs::read_to_string(file)
                .ok()
                .and_then(|t| Token::new(&t))
        });
        Self {
            endpoint,
            token,
            cache_dir: hf_hub::resolve_cache_dir(),
            offline: var("HF_HUB_OFFLINE").is_some_and(|v| truthy(&v)),
        }
    }

    /// `text` with the token (if any) replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        match &self.token {
            Some(t) => t.redact(text),
            None => text.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_never_formats() {
        let t = Token::new(" hf_secret \n").unwrap();
        assert_eq!(format!("{t:?}"), "Token(***)");
        assert_eq!(t.redact("a hf_secret b"), "a *** b");
        assert!(Token::new("  ").is_none());
        assert!(truthy("TRUE") && truthy("1") && !truthy("0"));
    }
}
