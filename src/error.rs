//! Typed errors for the library. The binary maps [`Error::is_bad_input`] to exit
//! code 2 (the user's recipe, video, checkpoint or split file is wrong) and
//! everything else to exit code 1 (a bug or an environment failure).

use std::path::PathBuf;

/// Library result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong inside vssl.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A recipe could not be resolved: names the layer (file, env, `--set`) and the key.
    #[error("recipe error in {layer}: key `{key}`: {message}")]
    Recipe {
        layer: String,
        key: String,
        message: String,
    },

    /// A file the user pointed at is missing or unreadable.
    // `error`, not `source`: the message already holds it, so `{:#}` chains do not
    // print it twice.
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    /// A checkpoint or weights file is malformed or does not fit the model.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },

    /// A video file could not be decoded or written.
    #[error("video {}: {message}", path.display())]
    Video { path: PathBuf, message: String },

    /// A dataset description (split file, list) is wrong; names file and line.
    #[error("dataset {}: {message}", path.display())]
    Dataset { path: PathBuf, message: String },

    /// Any other invalid user input (command-line arguments, run directories).
    #[error("{0}")]
    BadInput(String),

    /// A Hub request the user can fix: a bad token, no access, a missing repo or
    /// file, a file missing from the cache in offline mode.
    #[error("{0}")]
    Hub(String),

    /// The Hub server failed or misbehaved (5xx after retries, a network failure, an
    /// answer that breaks the protocol or a download that does not match).
    #[error("{0}")]
    HubServer(String),

    /// A loss term or gradient became NaN or infinite.
    #[error("training stopped: {0}")]
    NonFinite(String),

    /// Tensor maths failed: almost always a bug in vssl.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),

    /// Internal invariant broken.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// True when the user's input is at fault (exit code 2), false for internal errors (exit code 1).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Error::Recipe { .. }
                | Error::Io { .. }
                | Error::Checkpoint { .. }
                | Error::Video { .. }
                | Error::Dataset { .. }
                | Error::BadInput(_)
                | Error::Hub(_)
        )
    }

    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error: source,
        }
    }

    /// A checkpoint problem with the file it concerns.
    pub fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// One out-of-range config value: (key, message). Each config section's `validate`
/// returns keys relative to its own table; the recipe prefixes the section's dotted
/// path and turns it into [`Error::Recipe`] with the layer that supplied the value.
pub type Invalid = (String, String);

/// `Ok(())` when `ok`, otherwise the [`Invalid`] pair for `key` (message built lazily).
pub fn check(
    ok: bool,
    key: &str,
    msg: impl FnOnce() -> String,
) -> std::result::Result<(), Invalid> {
    if ok {
        Ok(())
    } else {
        Err((key.to_string(), msg()))
    }
}
