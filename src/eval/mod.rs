//! Downstream protocols on a learned (or randomly initialised) backbone: linear
//! probe and nearest-neighbour retrieval. Both share one feature extraction:
//! `test_clips` uniformly spaced, centre-cropped clips per video, pooled features
//! averaged per video, with the backbone in eval mode.

pub mod features;
pub mod linear;
pub mod retrieval;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::Serialize;

use crate::recipe::{self, Recipe, RecipeSource};
use crate::train::checkpoint::read_safetensors;
use crate::{registry, Error, Result};

pub use features::{extract, Features};

/// Downstream protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Linear classifier on frozen features.
    Linear,
    /// Nearest-neighbour retrieval recall@k.
    Knn,
}

impl std::str::FromStr for Protocol {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "linear" => Ok(Protocol::Linear),
            "knn" | "retrieval" => Ok(Protocol::Knn),
            other => Err(Error::BadInput(format!(
                "unknown protocol `{other}`; expected linear or knn"
            ))),
        }
    }
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Linear => "linear",
            Protocol::Knn => "knn",
        }
    }
}

/// Where the weights to evaluate come from.
#[derive(Debug, Clone)]
pub struct EvalTarget {
    /// The run directory (holds `recipe.resolved.toml`, `model.safetensors`, `eval/`).
    pub run_dir: PathBuf,
    /// The weights file (default `<run>/model.safetensors`).
    pub weights: PathBuf,
}

impl EvalTarget {
    /// Accepts a run directory or a `model.safetensors` inside one.
    pub fn locate(path: &Path) -> Result<Self> {
        let (run_dir, weights) = if path.is_dir() {
            (path.to_path_buf(), path.join("model.safetensors"))
        } else if path.is_file() {
            (
                path.parent().map(Path::to_path_buf).unwrap_or_default(),
                path.to_path_buf(),
            )
        } else {
            return Err(Error::BadInput(format!(
                "{}: no such run directory or weights file",
                path.display()
            )));
        };
        Ok(Self { run_dir, weights })
    }
}

/// Evaluates a run with the given protocols, writes `<run>/eval/<protocol>[-random].json`
/// and returns one JSON object per protocol.
pub fn evaluate(
    target: &EvalTarget,
    protocols: &[Protocol],
    random_init: bool,
    sets: &[String],
    device: &Device,
) -> Result<Vec<serde_json::Value>> {
    let recipe_file = target.run_dir.join("recipe.resolved.toml");
    if !recipe_file.is_file() {
        return Err(Error::BadInput(format!(
            "{}: missing; is {} a vssl run directory?",
            recipe_file.display(),
            target.run_dir.display()
        )));
    }
    let src = RecipeSource::with_sets(recipe_file, sets.to_vec());
    let recipe: Recipe = recipe::load(&src)?;
    let backbone = registry::backbone(&recipe, device)?;
    let weights_label = if random_init {
        "random-init".to_string()
    } else {
        let (tensors, _meta) = read_safetensors(&target.weights, device)?;
        let own: BTreeMap<_, _> = tensors
            .into_iter()
            .filter(|(k, _)| !k.starts_with("pretext."))
            .collect();
        let report = backbone
            .vars()
            .load(&own)
            .map_err(|e| Error::checkpoint(&target.weights, e.to_string()))?;
        if !report.missing.is_empty() {
            return Err(Error::checkpoint(
                &target.weights,
                format!("backbone tensors missing: {}", report.missing.join(", ")),
            ));
        }
        target.weights.display().to_string()
    };
    let dataset = registry::dataset(&recipe)?;
    let feats = extract(backbone.as_ref(), dataset.as_ref(), &recipe, device)?;
    let eval_dir = target.run_dir.join("eval");
    std::fs::create_dir_all(&eval_dir).map_err(|e| Error::io(&eval_dir, e))?;
    let mut out = Vec::new();
    for &p in protocols {
        let metrics = match p {
            Protocol::Linear => serde_json::to_value(linear::probe(
                &feats,
                dataset.num_classes(),
                &recipe.eval,
                recipe.train.seed,
            )?),
            Protocol::Knn => serde_json::to_value(retrieval::recall_at_k(&feats, &recipe.eval.k)?),
        }
        .map_err(|e| Error::Internal(e.to_string()))?;
        let json = serde_json::json!({
            "protocol": p.name(),
            "weights": weights_label,
            "random_init": random_init,
            "run": target.run_dir.display().to_string(),
            "dataset": dataset.describe(),
            "train_videos": feats.train_labels.len(),
            "test_videos": feats.test_labels.len(),
            "skipped": feats.skipped.len(),
            "metrics": metrics,
            "eval_recipe": recipe.eval,
        });
        let name = format!(
            "{}{}.json",
            p.name(),
            if random_init { "-random" } else { "" }
        );
        let path = eval_dir.join(name);
        let text =
            serde_json::to_string_pretty(&json).map_err(|e| Error::Internal(e.to_string()))? + "\n";
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        out.push(json);
    }
    Ok(out)
}
