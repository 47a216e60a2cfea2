//! The registry: component configs resolve to concrete objects here, with exhaustive
//! matches (no global string maps). It sits below `recipe`: every function takes the
//! component configs it needs, never a whole recipe.
//!
//! The method table (the `methods!` invocation below) is the one place a `[method] kind` is
//! declared: one line names the kind and its config type, and one
//! [`MethodSection`] impl says how the config is checked and built. A new method
//! family is its file under `pretext/` plus one such arm here.

use std::sync::Arc;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::backbone::BackboneConfig;
use crate::backbone::{self, Backbone};
use crate::data::cache::CachedDataset;
use crate::data::datasets::{self, VideoDataset};
use crate::data::DataConfig;
use crate::error::Invalid;
use crate::nn::VarStore;
use crate::pretext::{
    ExternalConfig, GeometricConfig, Pretext, SpeedSortConfig, TemporalContrastConfig,
    TemporalDiscriminativeConfig,
};
use crate::seed::{hash_str, mix};
use crate::Result;

/// Seed of the backbone's parameter initialisation for a run seed.
pub fn backbone_seed(seed: u64) -> u64 {
    mix(seed ^ hash_str("backbone"))
}

/// A `[data]` table's dataset, reading frames from its `cache` when one is set.
pub fn dataset(cfg: &DataConfig) -> Result<Arc<dyn VideoDataset>> {
    let ds: Arc<dyn VideoDataset> = Arc::from(datasets::build(cfg)?);
    Ok(match &cfg.cache {
        None => ds,
        Some(dir) => Arc::new(CachedDataset::open(dir, ds, cfg)?),
    })
}

/// A freshly initialised backbone for clips of `frames` frames, its parameters drawn
/// from the run seed `seed` (through [`backbone_seed`]); also the random-init baseline.
pub fn backbone(
    cfg: &BackboneConfig,
    frames: usize,
    seed: u64,
    device: &Device,
) -> Result<Box<dyn Backbone>> {
    let vs = VarStore::new(device, backbone_seed(seed));
    let net = backbone::build(cfg, &vs, frames)?;
    if let Some(init) = &cfg.init {
        load_init(net.as_ref(), init, device)?;
    }
    Ok(net)
}

/// Loads `backbone.init` (a path, `hf://` id or registry name) into a fresh backbone
/// with [`crate::eval::load_weights`]: every backbone tensor must be in the file;
/// `pretext.*` heads are ignored.
fn load_init(net: &dyn Backbone, init: &str, device: &Device) -> Result<()> {
    let resolved = crate::hub::resolve(init, &crate::hub::HubEnv::from_env())?;
    crate::eval::load_weights(net, &resolved.path, device)?;
    tracing::info!(
        "backbone initialised from {init} ({})",
        resolved.path.display()
    );
    Ok(())
}

/// The pretext method `method` names, around a fresh backbone (`backbone`, clips of
/// `frames` frames), everything seeded from the run seed `seed`.
pub fn pretext(
    method: &MethodConfig,
    backbone: &BackboneConfig,
    frames: usize,
    seed: u64,
    device: &Device,
) -> Result<Box<dyn Pretext>> {
    let net = self::backbone(backbone, frames, seed, device)?;
    let ctx = BuildContext {
        backbone,
        frames,
        seed,
        heads: VarStore::new(device, mix(seed ^ hash_str("heads"))),
    };
    method.build(net, ctx)
}

/// What a method's construction may use besides its own config.
pub struct BuildContext<'a> {
    /// The backbone's config (for methods that build a second encoder).
    pub backbone: &'a BackboneConfig,
    /// Frames per clip (`data.frames`).
    pub frames: usize,
    /// The run seed.
    pub seed: u64,
    /// The store for the method's own parameters (saved under `pretext.`).
    pub heads: VarStore,
}

/// How the registry checks and builds one `[method]` config.
pub trait MethodSection {
    /// Range checks for clips of `frames` frames; keys relative to `[method]`.
    fn validate(&self, frames: usize) -> std::result::Result<(), Invalid>;
    /// The method around the fresh backbone `net`.
    fn build(&self, net: Box<dyn Backbone>, ctx: BuildContext<'_>) -> Result<Box<dyn Pretext>>;
}

/// Declares the method kinds: `Variant("kind") => ConfigType`. Generates
/// [`MethodKind`], [`MethodConfig`] (serialised with the `kind` tag) and their dispatch.
macro_rules! methods {
    ($($(#[$doc:meta])* $variant:ident => $cfg:ty,)*) => {
        /// Pretext method kinds (`[method] kind = ...`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum MethodKind {
            $($(#[$doc])* $variant,)*
        }

        /// `[method]`: one variant per method kind, each with its own keys.
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[serde(tag = "kind", rename_all = "snake_case")]
        pub enum MethodConfig {
            $($(#[$doc])* $variant($cfg),)*
        }

        impl MethodConfig {
            pub fn kind(&self) -> MethodKind {
                match self {
                    $(MethodConfig::$variant(_) => MethodKind::$variant,)*
                }
            }

            /// Reads the `[method]` table (`section`, focused on it) as `kind`'s config.
            pub fn extract(
                kind: MethodKind,
                section: &figment::Figment,
            ) -> std::result::Result<Self, Box<figment::Error>> {
                Ok(match kind {
                    $(MethodKind::$variant => MethodConfig::$variant(section.extract().map_err(Box::new)?),)*
                })
            }

            fn section(&self) -> &dyn MethodSection {
                match self {
                    $(MethodConfig::$variant(c) => c,)*
                }
            }
        }
    };
}

methods! {
    /// Rotation prediction (3DRotNet): `GeometricMethod<Rotation3d>`.
    Geometric => GeometricConfig,
    /// Speed sorting: `SpeedSortMethod<VariableSpeed>`.
    SpeedSort => SpeedSortConfig,
    /// TCLR: `TemporalContrastMethod<Tclr>`.
    TemporalContrast => TemporalContrastConfig,
    /// VTDL: `TemporalDiscriminativeMethod<Vtdl>`.
    TemporalDiscriminative => TemporalDiscriminativeConfig,
    /// A method defined outside vssl and trained through `train::fit`: readable by
    /// `vssl eval` and `vssl compare`, refused by `vssl train`.
    External => ExternalConfig,
}

impl MethodConfig {
    /// Range checks of the method's config for clips of `frames` frames (`data.frames`);
    /// keys relative to the `[method]` table.
    pub fn validate(&self, frames: usize) -> std::result::Result<(), Invalid> {
        self.section().validate(frames)
    }

    /// The method around the fresh backbone `net`.
    pub fn build(&self, net: Box<dyn Backbone>, ctx: BuildContext<'_>) -> Result<Box<dyn Pretext>> {
        self.section().build(net, ctx)
    }
}

impl MethodSection for GeometricConfig {
    fn validate(&self, _frames: usize) -> std::result::Result<(), Invalid> {
        GeometricConfig::validate(self)
    }
    fn build(&self, net: Box<dyn Backbone>, ctx: BuildContext<'_>) -> Result<Box<dyn Pretext>> {
        Ok(Box::new(self.init(ctx.frames, net, ctx.heads)?))
    }
}

impl MethodSection for SpeedSortConfig {
    fn validate(&self, _frames: usize) -> std::result::Result<(), Invalid> {
        SpeedSortConfig::validate(self)
    }
    fn build(&self, net: Box<dyn Backbone>, ctx: BuildContext<'_>) -> Result<Box<dyn Pretext>> {
        Ok(Box::new(self.init(ctx.frames, net, ctx.heads)?))
    }
}

impl MethodSection for TemporalContrastConfig {
    fn validate(&self, frames: usize) -> std::result::Result<(), Invalid> {
        TemporalContrastConfig::validate(self, frames)
    }
    fn build(&self, net: Box<dyn Backbone>, ctx: BuildContext<'_>) -> Result<Box<dyn Pretext>> {
        Ok(Box::new(self.init(ctx.frames, net, ctx.heads)?))
    }
}

impl MethodSection for ExternalConfig {
    fn validate(&self, _frames: usize) -> std::result::Result<(), Invalid> {
        ExternalConfig::validate(self)
    }
    fn build(&self, _net: Box<dyn Backbone>, _ctx: BuildContext<'_>) -> Result<Box<dyn Pretext>> {
        Err(crate::Error::BadInput(self.refusal()))
    }
}

impl MethodSection for TemporalDiscriminativeConfig {
    fn validate(&self, _frames: usize) -> std::result::Result<(), Invalid> {
        TemporalDiscriminativeConfig::validate(self)
    }
    fn build(&self, net: Box<dyn Backbone>, ctx: BuildContext<'_>) -> Result<Box<dyn Pretext>> {
        // The key encoder: same architecture; its values are copied from `net`.
        let dev = net.vars().device().clone();
        let key = backbone::build(ctx.backbone, &VarStore::new(&dev, 0), ctx.frames)?;
        let queue_seed = mix(ctx.seed ^ hash_str("queue"));
        Ok(Box::new(
            self.init(ctx.frames, net, key, ctx.heads, queue_seed)?,
        ))
    }
}
