//! The `[backbone]` recipe section: architecture, normalisation and widths. It lives
//! beside the backbones it configures so `backbone` needs nothing from the recipe
//! layer; checks that need other sections (C3D's minimum clip size) stay in `recipe`.

use serde::{Deserialize, Serialize};

use crate::error::{check, Invalid};

/// Backbone architectures (see `backbone` for the exact structures and names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// torchvision's R3D-18: 3x3x3 convolutions everywhere (widths 64..512, two basic
    /// blocks per stage).
    #[serde(rename = "r3d_18")]
    R3d18,
    /// torchvision's MC3-18: R3D-18 with 3D convolutions in stage 1 only and 1x3x3
    /// (no temporal) convolutions in stages 2-4.
    #[serde(rename = "mc3_18")]
    Mc318,
    /// torchvision's R(2+1)D-18: every 3D convolution factorised into 1x3x3 then 3x1x1.
    #[serde(rename = "r2plus1d_18")]
    R2plus1d18,
    /// A CPU-friendly R3D (widths and depths from `widths`/`layers`), for quick recipes.
    R3dSmall,
    /// C3D with batch norm as in VCOP's self-supervised code (8 conv layers).
    C3d,
}

/// Normalisation layers inside the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    /// BatchNorm3d.
    Bn,
    /// Temporal Group Normalization (`ops::tgn`) with `tgn_groups` groups.
    Tgn,
}

/// `[backbone]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackboneConfig {
    pub arch: Arch,
    pub norm: NormKind,
    /// Channels of the four stages (r3d_small only; the 18-layer nets use 64,128,256,512).
    pub widths: [usize; 4],
    /// Basic blocks per stage (r3d_small only; the 18-layer nets use 2,2,2,2).
    pub layers: [usize; 4],
    /// Temporal groups per part of the network when `norm = "tgn"`: entry 0 is the stem
    /// (C3D: conv1), entries 1-4 are stages layer1..layer4 (C3D: conv2, conv3, conv4,
    /// conv5). Each layer clamps its entry to the time steps it sees for `data.frames`.
    pub tgn_groups: [usize; 5],
    /// Stage 4 without temporal stride: its first convolution gets temporal stride 1,
    /// dilation 2 and padding 2 and its downsample temporal stride 1 (TCLR), so 16
    /// frames give T' = 4 instead of 2 (ResNets only; no extra parameters).
    pub temporal_dilation_last_stage: bool,
    /// Build the classifier (`fc`, C3D: `linear`) with this many classes. Not used by
    /// the backbone's feature map; absent by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<usize>,
    /// Start from these weights instead of the seeded initialisation: a path, an
    /// `hf://ORG/NAME[@REV][/FILE]` id or a name from `registry/index.toml`. Only the
    /// backbone's tensors are loaded (`pretext.*` and classifier tensors are ignored);
    /// every one of them must be there. Absent by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
}

impl Default for BackboneConfig {
    fn default() -> Self {
        Self {
            arch: Arch::R3dSmall,
            norm: NormKind::Bn,
            widths: [16, 32, 64, 128],
            layers: [1, 1, 1, 1],
            tgn_groups: [4, 4, 2, 2, 1],
            temporal_dilation_last_stage: false,
            num_classes: None,
            init: None,
        }
    }
}

impl BackboneConfig {
    /// Range checks of `[backbone]` alone; on failure returns `(key, message)` with the
    /// key relative to the table (`widths`).
    pub fn validate(&self) -> std::result::Result<(), Invalid> {
        let b = self;
        for (i, w) in b.widths.iter().enumerate() {
            check(*w >= 1, "widths", || {
                format!("entry {i} must be at least 1")
            })?;
        }
        for (i, l) in b.layers.iter().enumerate() {
            check(*l >= 1, "layers", || {
                format!("entry {i} must be at least 1")
            })?;
        }
        for (i, g) in b.tgn_groups.iter().enumerate() {
            check(*g >= 1, "tgn_groups", || {
                format!("entry {i} must be at least 1")
            })?;
        }
        if let Some(n) = b.num_classes {
            check(n >= 1, "num_classes", || "must be at least 1".into())?;
        }
        if b.arch == Arch::C3d {
            check(
                !b.temporal_dilation_last_stage,
                "temporal_dilation_last_stage",
                || "only applies to the ResNet archs, not c3d".into(),
            )?;
        }
        Ok(())
    }
}
