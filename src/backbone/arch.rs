//! Architecture names as recipes and the command line spell them (`r3d_18`, ...,
//! `c3d`), and each architecture's classifier name: shared by the commands that take
//! `--arch` and by the weights metadata they write.

use super::config::Arch;
use crate::{Error, Result};

/// The recipe name of an architecture (`r3d_18`, ..., `c3d`).
pub fn arch_name(arch: Arch) -> String {
    serde_json::to_value(arch)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{arch:?}"))
}

const ARCHS: [Arch; 5] = [
    Arch::R3d18,
    Arch::Mc318,
    Arch::R2plus1d18,
    Arch::R3dSmall,
    Arch::C3d,
];

/// Parses an architecture name as recipes spell it.
pub fn parse_arch(s: &str) -> Result<Arch> {
    ARCHS
        .iter()
        .copied()
        .find(|a| arch_name(*a) == s.trim())
        .ok_or_else(|| {
            Error::BadInput(format!(
                "--arch {s}: unknown architecture; expected one of: {}",
                ARCHS.map(arch_name).join(", ")
            ))
        })
}

/// The name of an architecture's classifier (`fc`, C3D: `linear`).
pub fn classifier_prefix(arch: Arch) -> &'static str {
    match arch {
        Arch::C3d => "linear",
        _ => "fc",
    }
}
