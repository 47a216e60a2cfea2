//! One HTTP client for every Hub request: retries with exponential backoff on 5xx,
//! 429 and network failures, the token attached as a sensitive header, and the
//! mapping of HTTP statuses to errors a user can act on. Every message passes through
//! the token redaction, including text a server sends back.

use std::time::Duration;

use reqwest::blocking::{Client as Http, RequestBuilder, Response};
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::StatusCode;

use super::env::HubEnv;
use crate::{Error, Result};

/// How often and how patiently a failing request is retried.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts in all (first try included).
    pub attempts: u32,
    /// Wait before the first retry; doubled each time.
    pub base: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 4,
            base: Duration::from_millis(500),
        }
    }
}

/// The client: one that follows redirects (downloads, uploads) and one that does not
/// (metadata requests, which read the headers of the redirect itself).
pub struct Client {
    follow: Http,
    no_redirect: Http,
    env: HubEnv,
    pub retry: Retry,
}

/// Whether a request carries the Hub token. Upload URLs the LFS server hands out
/// (often presigned storage URLs on another host) never get it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    Token,
    None,
}

impl Client {
    pub fn new(env: &HubEnv) -> Result<Self> {
        let build = |policy| {
            Http::builder()
                .user_agent(concat!("vssl/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(20))
                .timeout(None)
                .redirect(policy)
                .build()
                .map_err(|e| Error::Internal(format!("HTTP client: {e}")))
        };
        Ok(Self {
            follow: build(reqwest::redirect::Policy::limited(10))?,
            no_redirect: build(reqwest::redirect::Policy::none())?,
            env: env.clone(),
            retry: Retry::default(),
        })
    }

    pub fn env(&self) -> &HubEnv {
        &self.env
    }

    /// `endpoint + path` (`path` starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.env.endpoint, path)
    }

    /// The client that follows redirects, for building requests.
    pub fn http(&self) -> &Http {
        &self.follow
    }

    /// The client that does not follow redirects.
    pub fn http_no_redirect(&self) -> &Http {
        &self.no_redirect
    }

    /// Sends the request `build` makes (called again for each attempt, so bodies are
    /// fresh), retrying 5xx, 429 and network failures with backoff. Returns the last
    /// response whatever its status; [`check`](Self::check) turns it into an error.
    pub fn send(
        &self,
        what: &str,
        auth: Auth,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response> {
        let mut wait = self.retry.base;
        for attempt in 1..=self.retry.attempts.max(1) {
            let mut req = build();
            if let (Auth::Token, Some(token)) = (auth, &self.env.token) {
                let mut v = HeaderValue::from_str(&token.bearer()).map_err(|_| {
                    Error::Hub("the Hub token holds characters a header cannot carry".into())
                })?;
                v.set_sensitive(true);
                req = req.header(AUTHORIZATION, v);
            }
            let last = attempt == self.retry.attempts.max(1);
            match req.send() {
                Ok(resp) => {
                    let s = resp.status();
                    if (s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS) && !last {
                        self.back_off(
                            what,
                            &format!("the server answered {s}"),
                            attempt,
                            &mut wait,
                        );
                        continue;
                    }
                    return Ok(resp);
                }
                Err(e) => {
                    let msg = self.env.redact(&format!("{e}"));
                    if (e.is_connect() || e.is_timeout() || e.is_request()) && !last {
                        self.back_off(
                            what,
                            &format!("network failure ({msg})"),
                            attempt,
                            &mut wait,
                        );
                        continue;
                    }
                    return Err(Error::HubServer(format!(
                        "{what}: network failure talking to {}: {msg}",
                        self.env.endpoint
                    )));
                }
            }
        }
        unreachable!("the loop returns on its last attempt")
    }

    /// Says why and how long, sleeps, doubles the wait.
    fn back_off(&self, what: &str, why: &str, attempt: u32, wait: &mut Duration) {
        tracing::warn!(
            "{what}: {why}; retrying in {:.1} s (attempt {} of {})",
            wait.as_secs_f64(),
            attempt + 1,
            self.retry.attempts
        );
        std::thread::sleep(*wait);
        *wait *= 2;
    }

    /// `send` then [`check`](Self::check).
    pub fn send_ok(
        &self,
        what: &str,
        auth: Auth,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response> {
        let resp = self.send(what, auth, build)?;
        self.check(what, resp)
    }

    /// A 2xx response as it is; any other status as an error saying what to do.
    pub fn check(&self, what: &str, resp: Response) -> Result<Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let detail = self.server_message(resp);
        let code = status.as_u16();
        let msg = match code {
            401 => format!(
                "{what}: the Hub refused the token (401 Unauthorized): set HF_TOKEN or log in \
                 (the token file is HF_HOME/token){detail}"
            ),
            403 => format!(
                "{what}: access denied (403 Forbidden): the token has no write access to this \
                 repo (use a write token, or a repo under your own name){detail}"
            ),
            404 => format!("{what}: not found (404){detail}"),
            409 | 412 => format!(
                "{what}: the revision moved (HTTP {code}): someone committed to it since this \
                 push started; run the push again{detail}"
            ),
            _ if status.is_server_error() => {
                return Err(Error::HubServer(format!(
                    "{what}: the Hub server failed (HTTP {code}) after {} attempts; try again \
                     later{detail}",
                    self.retry.attempts
                )))
            }
            _ => format!("{what}: HTTP {code}{detail}"),
        };
        Err(Error::Hub(msg))
    }

    /// `": <message>"` from an error response (`X-Error-Message`, the JSON `error`
    /// field, or the first 300 characters of the body), redacted.
    fn server_message(&self, resp: Response) -> String {
        let header = resp
            .headers()
            .get("x-error-message")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp.text().unwrap_or_default();
        let from_json = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string));
        let text = header
            .or(from_json)
            .unwrap_or_else(|| body.chars().take(300).collect::<String>());
        let text = text.trim();
        if text.is_empty() {
            String::new()
        } else {
            format!(": {}", self.env.redact(text))
        }
    }
}
