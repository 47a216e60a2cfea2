//! Recipes: the typed, validated description of one run. A recipe is layered with
//! figment from base files, the experiment file, a sweep point, `VSSL_` environment
//! variables and `--set` arguments (see [`layers`]). Each section's struct and range
//! checks live beside the component it configures (`data::DataConfig`,
//! `backbone::BackboneConfig`, `train::TrainConfig`, `eval::EvalConfig`); each method's config sits in its
//! file under `pretext/` and the `[method]` table is read through the registry; this module
//! holds the [`Recipe`] aggregate and the checks that span sections. Every
//! section denies unknown keys, and every error names the layer (file, env, `--set`)
//! and the dotted key.

pub mod layers;

use serde::Serialize;

pub use crate::backbone::{Arch, BackboneConfig, NormKind};
pub use crate::data::augment::{AugmentConfig, CropMode};
pub use crate::data::{DataConfig, DataKind};
use crate::error::check;
pub use crate::error::Invalid;
pub use crate::eval::{EvalConfig, Pooling};
pub use crate::registry::{MethodConfig, MethodKind};
pub use crate::train::TrainConfig;

pub use layers::{load, RecipeSource};

/// A fully resolved recipe.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recipe {
    /// Run name (defaults to the experiment file's stem).
    pub name: String,
    pub data: DataConfig,
    pub backbone: BackboneConfig,
    pub method: MethodConfig,
    pub train: TrainConfig,
    pub eval: EvalConfig,
}

impl Recipe {
    /// The recipe as TOML, as written to `recipe.resolved.toml` and into weights metadata.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# could not serialise recipe: {e}\n"))
    }
}

impl Recipe {
    /// The dataset the downstream protocols use.
    pub fn eval_data(&self) -> &DataConfig {
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
        self.method
            .validate(self.data.frames)
            .map_err(under("method"))?;
        self.train.validate().map_err(under("train"))?;
        self.eval.validate().map_err(under("eval"))?;
        Ok(())
    }
}
