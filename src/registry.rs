//! The registry: a recipe's enums resolve to concrete objects here, with
//! exhaustive matches (no global string maps). A new method, backbone or dataset
//! kind is one enum variant in `recipe` plus one arm below.

use std::sync::Arc;

use candle_core::Device;

use crate::backbone::{self, Backbone};
use crate::data::cache::CachedDataset;
use crate::data::datasets::{self, VideoDataset};
use crate::nn::VarStore;
use crate::seed::{hash_str, mix};
use crate::pretext::{Pretext, RotationPrediction, SpeedSort, Tclr, Vtdl};
use crate::recipe::{BackboneCfg, DataCfg, MethodCfg};
use crate::Result;

/// Seed of the backbone's parameter initialisation for a run seed.
pub fn backbone_seed(seed: u64) -> u64 {
    mix(seed ^ hash_str("backbone"))
}

/// A `[data]` table's dataset, reading frames from its `cache` when one is set
/// (evaluation: `registry::dataset(recipe.eval_data())`).
pub fn dataset(cfg: &DataCfg) -> Result<Arc<dyn VideoDataset>> {
    let ds: Arc<dyn VideoDataset> = Arc::from(datasets::build(cfg)?);
    Ok(match &cfg.cache {
        None => ds,
        Some(dir) => Arc::new(CachedDataset::open(dir, ds, cfg)?),
    })
}

/// A freshly initialised backbone for a run seed (also the random-init baseline).
pub fn backbone(
    cfg: &BackboneCfg,
    frames: usize,
    seed: u64,
    device: &Device,
) -> Result<Box<dyn Backbone>> {
    let vs = VarStore::new(device, backbone_seed(seed));
    backbone::build(cfg, &vs, frames)
}

/// A pretext method around a fresh backbone, for a run seed.
pub fn pretext(
    method: &MethodCfg,
    backbone: &BackboneCfg,
    frames: usize,
    seed: u64,
    device: &Device,
) -> Result<Box<dyn Pretext>> {
    let net = self::backbone(backbone, frames, seed, device)?;
    let heads = VarStore::new(device, mix(seed ^ hash_str("heads")));
    Ok(match method {
        MethodCfg::Geometric(cfg) => Box::new(RotationPrediction::new(cfg, frames, net, heads)?),
        MethodCfg::SpeedSort(cfg) => Box::new(SpeedSort::new(cfg, frames, net, heads)?),
        MethodCfg::TemporalContrast(cfg) => Box::new(Tclr::new(cfg, frames, net, heads)?),
        MethodCfg::TemporalDiscriminative(cfg) => Box::new(Vtdl::new(
            cfg,
            backbone,
            frames,
            net,
            heads,
            mix(seed ^ hash_str("queue")),
        )?),
    })
}
