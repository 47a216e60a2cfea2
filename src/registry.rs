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
use crate::recipe::{DataCfg, MethodCfg, Recipe};
use crate::Result;

/// Seed of the backbone's parameter initialisation for a run seed.
pub fn backbone_seed(seed: u64) -> u64 {
    mix(seed ^ hash_str("backbone"))
}

/// The dataset a recipe names.
pub fn dataset(recipe: &Recipe) -> Result<Arc<dyn VideoDataset>> {
    open_data(&recipe.data)
}

/// The dataset the downstream protocols use (`[eval.data]`, else `[data]`).
pub fn eval_dataset(recipe: &Recipe) -> Result<Arc<dyn VideoDataset>> {
    open_data(recipe.eval_data())
}

/// A `[data]` table's dataset, reading frames from its `cache` when one is set.
fn open_data(cfg: &DataCfg) -> Result<Arc<dyn VideoDataset>> {
    let ds: Arc<dyn VideoDataset> = Arc::from(datasets::build(cfg)?);
    Ok(match &cfg.cache {
        None => ds,
        Some(dir) => Arc::new(CachedDataset::open(dir, ds, cfg)?),
    })
}

/// A freshly initialised backbone for a recipe (also the random-init baseline).
pub fn backbone(recipe: &Recipe, device: &Device) -> Result<Box<dyn Backbone>> {
    let vs = VarStore::new(device, backbone_seed(recipe.train.seed));
    backbone::build(&recipe.backbone, &vs, recipe.data.frames)
}

/// The pretext method a recipe names, around a fresh backbone.
pub fn pretext(recipe: &Recipe, device: &Device) -> Result<Box<dyn Pretext>> {
    let net = backbone(recipe, device)?;
    let heads = VarStore::new(device, mix(recipe.train.seed ^ hash_str("heads")));
    Ok(match &recipe.method {
        MethodCfg::Geometric(cfg) => Box::new(RotationPrediction::new(
            cfg,
            recipe.data.frames,
            net,
            heads,
        )?),
        MethodCfg::SpeedSort(cfg) => Box::new(SpeedSort::new(cfg, recipe.data.frames, net, heads)?),
        MethodCfg::TemporalContrast(cfg) => {
            Box::new(Tclr::new(cfg, recipe.data.frames, net, heads)?)
        }
        MethodCfg::TemporalDiscriminative(cfg) => Box::new(Vtdl::new(
            cfg,
            &recipe.backbone,
            recipe.data.frames,
            net,
            heads,
            mix(recipe.train.seed ^ hash_str("queue")),
        )?),
    })
}
