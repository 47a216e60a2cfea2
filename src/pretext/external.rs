//! `[method] kind = "external"`: a method defined outside vssl (through a family trait
//! and [`crate::train::fit`]) still leaves a complete, readable run directory. Its
//! recipe names the method and keeps the method's own settings as a free table, so
//! `vssl eval`, `vssl compare` and sweeps read the run like any other; only `vssl train`
//! refuses it, since vssl cannot build a method it does not know.

use serde::{Deserialize, Serialize};

use crate::error::{check, Invalid};

/// `[method] kind = "external"`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExternalConfig {
    /// Present so the section can be read as one table; always "external".
    #[serde(skip_serializing)]
    pub kind: Option<String>,
    /// The method's name (e.g. the program or type that defines it).
    pub name: String,
    /// The method's own settings, recorded as given (`[method.settings]`).
    #[serde(skip_serializing_if = "toml::Table::is_empty")]
    pub settings: toml::Table,
}

impl ExternalConfig {
    /// Keys relative to `[method]`.
    pub fn validate(&self) -> std::result::Result<(), Invalid> {
        check(!self.name.trim().is_empty(), "name", || {
            "an external method needs a name (what defines it)".into()
        })
    }

    /// Why `vssl train` cannot run this recipe.
    pub fn refusal(&self) -> String {
        format!(
            "method.kind = \"external\" (`{}`): the method is defined outside vssl; train it \
             with the program that defines it (through vssl::train::fit). vssl eval and \
             vssl compare read its runs as usual",
            self.name
        )
    }
}
