//! Recipes: the typed, validated description of one run. A recipe is layered with
//! figment from base files, the experiment file, a sweep point, `VSSL_` environment
//! variables and `--set` arguments (see [`layers`]). Each section's struct and range
//! checks live beside the component it configures (`data::DataCfg`,
//! `backbone::BackboneCfg`, `train::TrainCfg`, `eval::EvalCfg`); this module holds the
//! [`Recipe`] aggregate, the checks that span sections, and the method sections. Every
//! section denies unknown keys, and every error names the layer (file, env, `--set`)
//! and the dotted key.

pub mod layers;

use serde::{Deserialize, Serialize};

pub use crate::backbone::{Arch, BackboneCfg, NormKind};
pub use crate::data::augment::{AugmentCfg, CropMode};
pub use crate::data::{DataCfg, DataKind};
use crate::error::check;
pub use crate::error::Invalid;
pub use crate::eval::{EvalCfg, Pooling};
pub use crate::train::TrainCfg;

pub use layers::{load, RecipeSource};

/// A fully resolved recipe.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recipe {
    /// Run name (defaults to the experiment file's stem).
    pub name: String,
    pub data: DataCfg,
    pub backbone: BackboneCfg,
    pub method: MethodCfg,
    pub train: TrainCfg,
    pub eval: EvalCfg,
}

impl Recipe {
    /// The recipe as TOML, as written to `recipe.resolved.toml` and into weights metadata.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# could not serialise recipe: {e}\n"))
    }
}

/// Pretext method families (`[method] kind = ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodKind {
    Geometric,
    SpeedSort,
    TemporalContrast,
    TemporalDiscriminative,
}

/// `[method]`: one variant per method family, each with its own keys.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MethodCfg {
    Geometric(GeometricCfg),
    SpeedSort(SpeedSortCfg),
    TemporalContrast(TemporalContrastCfg),
    TemporalDiscriminative(TemporalDiscriminativeCfg),
}

impl MethodCfg {
    pub fn kind(&self) -> MethodKind {
        match self {
            MethodCfg::Geometric(_) => MethodKind::Geometric,
            MethodCfg::SpeedSort(_) => MethodKind::SpeedSort,
            MethodCfg::TemporalContrast(_) => MethodKind::TemporalContrast,
            MethodCfg::TemporalDiscriminative(_) => MethodKind::TemporalDiscriminative,
        }
    }
}

/// How rotations are drawn for rotation prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RotationsPerClip {
    /// One random rotation per clip (the public 3DRotNet re-implementation).
    One,
    /// All four rotated copies of every clip in the batch (image RotNet). Default.
    All,
}

/// `[method] kind = "geometric"`: 3DRotNet rotation prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeometricCfg {
    /// Present so the section can be read as one table; always "geometric".
    #[serde(skip_serializing)]
    pub kind: Option<MethodKind>,
    pub rotations_per_clip: RotationsPerClip,
    /// Clip stride is drawn uniformly from `stride_min..=stride_max`.
    pub stride_min: usize,
    pub stride_max: usize,
    /// Dropout before the rotation classifier.
    pub dropout: f64,
}

impl Default for GeometricCfg {
    fn default() -> Self {
        Self {
            kind: None,
            rotations_per_clip: RotationsPerClip::All,
            stride_min: 1,
            stride_max: 5,
            dropout: 0.5,
        }
    }
}

/// What speed sorting predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpeedLabel {
    /// One class per video: the permutation that sorts its shuffled clips by signed
    /// speed (`n_clips!` classes). Default.
    Sort,
    /// One class per clip: its own (speed, direction).
    PerClip,
}

/// `[method] kind = "speed_sort"`: sort clips of one video by playback speed
/// (SpeedSortPretext; see METHODS.md section 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpeedSortCfg {
    /// Present so the section can be read as one table; always "speed_sort".
    #[serde(skip_serializing)]
    pub kind: Option<MethodKind>,
    /// Clips per video, each at a distinct speed.
    pub n_clips: usize,
    /// Playback speeds (frame strides) to draw from; distinct, each >= 1.
    pub speeds: Vec<usize>,
    /// Allow backward playback (each clip reversed with probability 0.5).
    pub reverse: bool,
    pub label: SpeedLabel,
    /// Width of the shared pair layer of the `"sort"` head.
    pub pair_hidden: usize,
    /// Dropout before the final classifier.
    pub dropout: f64,
}

impl Default for SpeedSortCfg {
    fn default() -> Self {
        Self {
            kind: None,
            n_clips: 3,
            speeds: vec![1, 2, 4, 8],
            reverse: true,
            label: SpeedLabel::Sort,
            pair_hidden: 512,
            dropout: 0.5,
        }
    }
}

/// How the local-local loss is reduced over the videos of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LlReduction {
    /// Mean over videos (default; the three losses on one scale).
    Mean,
    /// Sum over videos, as TCLR's public code does: LL weighted by the batch size.
    Sum,
}

/// `[method] kind = "temporal_contrast"`: TCLR (METHODS.md section 3). Total loss
/// `w_ic * IC + w_ll * LL + w_gl * GL`; a weight of 0 switches its loss off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemporalContrastCfg {
    /// Present so the section can be read as one table; always "temporal_contrast".
    #[serde(skip_serializing)]
    pub kind: Option<MethodKind>,
    /// Frame stride of the sparse clip; `data.frames * sparse_stride` frames are split
    /// into `dense_clips` parts, one dense clip each.
    pub sparse_stride: usize,
    /// Dense clips per video (paper: 4).
    pub dense_clips: usize,
    /// Softmax temperature of all three losses.
    pub temperature: f64,
    /// Weight of the instance loss (IC).
    pub w_ic: f64,
    /// Weight of the local-local loss (LL).
    pub w_ll: f64,
    /// Weight of the global-local loss (GL).
    pub w_gl: f64,
    /// Add the dense instance term to IC (all dense clips of a video positive to each
    /// other, other videos' dense clips negative), as the public code does.
    pub ic_dense: bool,
    pub ll_reduction: LlReduction,
    /// Projection MLP: C -> proj_hidden, BN, ReLU -> proj_dim, BN, L2 normalise.
    pub proj_hidden: usize,
    pub proj_dim: usize,
}

impl Default for TemporalContrastCfg {
    fn default() -> Self {
        Self {
            kind: None,
            sparse_stride: 4,
            dense_clips: 4,
            temperature: 0.1,
            w_ic: 1.0,
            w_ll: 1.0,
            w_gl: 1.0,
            ic_dense: true,
            ll_reduction: LlReduction::Mean,
            proj_hidden: 512,
            proj_dim: 128,
        }
    }
}

/// `[method] kind = "temporal_discriminative"`: VTDL, temporal triplets contrasted
/// against a momentum encoder's memory bank (METHODS.md section 4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemporalDiscriminativeCfg {
    /// Present so the section can be read as one table; always "temporal_discriminative".
    #[serde(skip_serializing)]
    pub kind: Option<MethodKind>,
    /// Frame stride of all three clips.
    pub stride: usize,
    /// Least (circular) distance in frames between the anchor's and the negative's start.
    pub min_gap: usize,
    /// Temporal Consistent Augmentation on the anchor.
    pub tca: bool,
    /// TCA mixing weight `l` is drawn from `U(0, tca_max)`.
    pub tca_max: f64,
    /// EMA momentum of the key encoder (0 copies the query encoder, 1 freezes it).
    pub momentum: f64,
    /// Keys kept in the FIFO memory bank.
    pub queue_size: usize,
    /// InfoNCE temperature.
    pub temperature: f64,
    /// Weight of the margin triplet loss (the public code computes it but adds 0).
    pub triplet_weight: f64,
    /// Margin of the triplet loss.
    pub margin: f64,
}

impl Default for TemporalDiscriminativeCfg {
    fn default() -> Self {
        Self {
            kind: None,
            stride: 4,
            min_gap: 8,
            tca: true,
            tca_max: 0.1,
            momentum: 0.999,
            queue_size: 16384,
            temperature: 0.07,
            triplet_weight: 0.0,
            margin: 1.0,
        }
    }
}

impl Recipe {
    /// The dataset the downstream protocols use.
    pub fn eval_data(&self) -> &DataCfg {
        self.eval.resolved_data(&self.data)
    }

    /// Frames per evaluation clip.
    pub fn eval_frames(&self) -> usize {
        self.eval.resolved_frames(&self.data)
    }
}

/// Prefixes a section-relative key with the section's dotted path.
fn under(section: &str) -> impl Fn(Invalid) -> Invalid + '_ {
    move |(k, m)| (format!("{section}.{k}"), m)
}

impl Recipe {
    /// Range and consistency checks that types alone cannot express: each section's
    /// own checks (keys prefixed with the section) and those spanning sections.
    pub fn validate(&self) -> std::result::Result<(), Invalid> {
        self.data.validate().map_err(under("data"))?;
        let b = &self.backbone;
        b.validate().map_err(under("backbone"))?;
        if b.arch == Arch::C3d {
            // Four max-pools halve T three times and H, W four times.
            let d = &self.data;
            check(d.frames >= 8, "data.frames", || {
                format!("c3d needs at least 8 frames, got {}", d.frames)
            })?;
            check(d.size >= 16, "data.size", || {
                format!("c3d needs at least 16 pixels, got {}", d.size)
            })?;
        }
        match &self.method {
            MethodCfg::Geometric(g) => {
                check(g.stride_min >= 1, "method.stride_min", || {
                    "must be at least 1".into()
                })?;
                check(g.stride_max >= g.stride_min, "method.stride_max", || {
                    format!("must be >= method.stride_min ({})", g.stride_min)
                })?;
                check((0.0..1.0).contains(&g.dropout), "method.dropout", || {
                    format!("must be in [0, 1), got {}", g.dropout)
                })?;
            }
            MethodCfg::SpeedSort(m) => validate_speed_sort(m)?,
            MethodCfg::TemporalContrast(m) => validate_temporal_contrast(m, self.data.frames)?,
            MethodCfg::TemporalDiscriminative(m) => validate_temporal_discriminative(m)?,
        }
        self.train.validate().map_err(under("train"))?;
        self.eval.validate().map_err(under("eval"))?;
        Ok(())
    }
}

/// Checks of `[method] kind = "speed_sort"`.
fn validate_speed_sort(m: &SpeedSortCfg) -> std::result::Result<(), Invalid> {
    for (i, s) in m.speeds.iter().enumerate() {
        check(*s >= 1, "method.speeds", || {
            format!("entry {i} must be at least 1, got {s}")
        })?;
        check(!m.speeds[..i].contains(s), "method.speeds", || {
            format!("speeds must be distinct; {s} appears twice")
        })?;
    }
    check(m.n_clips >= 2, "method.n_clips", || {
        format!("must be at least 2, got {}", m.n_clips)
    })?;
    check(m.n_clips <= m.speeds.len(), "method.n_clips", || {
        format!(
            "{} clips need as many distinct speeds; method.speeds has {}",
            m.n_clips,
            m.speeds.len()
        )
    })?;
    if m.label == SpeedLabel::Sort {
        check(m.n_clips <= 5, "method.n_clips", || {
            format!(
                "at most 5 with label = \"sort\" (n_clips! classes), got {}",
                m.n_clips
            )
        })?;
    }
    check(m.pair_hidden >= 1, "method.pair_hidden", || {
        "must be at least 1".into()
    })?;
    check((0.0..1.0).contains(&m.dropout), "method.dropout", || {
        format!("must be in [0, 1), got {}", m.dropout)
    })?;
    Ok(())
}

/// Checks of `[method] kind = "temporal_contrast"` (clips of `frames` frames).
fn validate_temporal_contrast(
    m: &TemporalContrastCfg,
    frames: usize,
) -> std::result::Result<(), Invalid> {
    check(m.sparse_stride >= 1, "method.sparse_stride", || {
        "must be at least 1".into()
    })?;
    check(m.dense_clips >= 1, "method.dense_clips", || {
        "must be at least 1".into()
    })?;
    check(
        (frames * m.sparse_stride).is_multiple_of(m.dense_clips),
        "method.dense_clips",
        || {
            format!(
                "must divide the sparse span data.frames * method.sparse_stride = {}",
                frames * m.sparse_stride
            )
        },
    )?;
    check(
        m.temperature.is_finite() && m.temperature > 0.0,
        "method.temperature",
        || format!("must be > 0, got {}", m.temperature),
    )?;
    for (key, w) in [
        ("method.w_ic", m.w_ic),
        ("method.w_ll", m.w_ll),
        ("method.w_gl", m.w_gl),
    ] {
        check(w.is_finite() && w >= 0.0, key, || {
            format!("must be >= 0 (0 switches the loss off), got {w}")
        })?;
    }
    check(m.w_ic + m.w_ll + m.w_gl > 0.0, "method.w_ic", || {
        "w_ic, w_ll and w_gl are all 0: nothing to learn".into()
    })?;
    check(m.w_ll == 0.0 || m.dense_clips >= 2, "method.w_ll", || {
        "the local-local loss needs method.dense_clips >= 2 (or w_ll = 0)".into()
    })?;
    check(m.proj_hidden >= 1, "method.proj_hidden", || {
        "must be at least 1".into()
    })?;
    check(m.proj_dim >= 1, "method.proj_dim", || {
        "must be at least 1".into()
    })?;
    Ok(())
}

/// Checks of `[method] kind = "temporal_discriminative"`.
fn validate_temporal_discriminative(
    m: &TemporalDiscriminativeCfg,
) -> std::result::Result<(), Invalid> {
    check(m.stride >= 1, "method.stride", || {
        "must be at least 1".into()
    })?;
    check(m.min_gap >= 1, "method.min_gap", || {
        "must be at least 1".into()
    })?;
    check((0.0..1.0).contains(&m.tca_max), "method.tca_max", || {
        format!("must be in [0, 1), got {}", m.tca_max)
    })?;
    check((0.0..=1.0).contains(&m.momentum), "method.momentum", || {
        format!("must be in [0, 1], got {}", m.momentum)
    })?;
    check(m.queue_size >= 1, "method.queue_size", || {
        "must be at least 1".into()
    })?;
    check(
        m.temperature.is_finite() && m.temperature > 0.0,
        "method.temperature",
        || format!("must be > 0, got {}", m.temperature),
    )?;
    check(m.triplet_weight >= 0.0, "method.triplet_weight", || {
        format!("must be >= 0, got {}", m.triplet_weight)
    })?;
    check(m.margin >= 0.0, "method.margin", || {
        format!("must be >= 0, got {}", m.margin)
    })?;
    Ok(())
}
